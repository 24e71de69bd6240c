//! The client API, typed: one method per call, taking the request and what the call
//! carries besides ([`Call`]: its hop count, and who made it) and answering with the reply or a call-outcome [`Error`]. The gRPC service
//! (`service`) is a thin adapter over it, and the HTTP API is to be another.
//!
//! Each method validates what it can without state (the absolute caps of
//! `raft_store::limits` among it, so an oversized request is refused before anything
//! is proposed), turns the request into a command or a read, and hands it to the
//! router (`route`), which runs it on the shard's leader (here or by forwarding).
//! Retry keys the caller left empty (client reservation id, idempotency key, event
//! id) are filled in here, before routing, so the router's own retries reuse them.
//!
//! Commit runs the checkout saga on the shard's leader (`shard::checkout`).
//!
//! Each routed method gives the router two things: what to run where the shard is
//! hosted (a closure given this node's replica), and the call as it is forwarded
//! elsewhere ([`Outbound`]: the request encoded once, sent on by `forward`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use raft_store::limits::check_command_bytes;
use raft_store::raft::NodeId;
use raft_store::{Command, Limit, Refusal, Reply};
use seatd_proto::v1 as pb;
use seatd_wire as convert;
use seatd_wire::routing::paths;

pub mod holds;

use crate::auth::Role;
use crate::cluster_view::{local_status, merge_views, peer_views};
use crate::error::Error;
use crate::forward::{Answer, Call, Outbound};
use crate::limits::{
    EVENTS_PER_LIST_DEFAULT, EVENTS_PER_LIST_MAX, HOLDS_PER_LIST_DEFAULT, HOLDS_PER_LIST_MAX,
};
use crate::process::Process;
use crate::route::Mode;
use crate::shard::Shard;
use holds::{hold_command, validate_hold};

/// The client API as its callers see it: the gRPC service calls it, and the HTTP API
/// will. [`Api`] decides or forwards each call; a frontend wraps it in a cache
/// (`frontend::Cached`), a decorator that answers what callers accept old.
pub trait SeatsApi: Send + Sync + 'static {
    /// The process the API runs in (the gRPC service routes by its shards).
    fn node(&self) -> &Arc<Process>;
    /// Whether calls on `path` must reach this API decoded even when their routing
    /// metadata names a shard led elsewhere (a decorator that watches them: the
    /// frontend's cache forgets its lists when an event changes). Otherwise the gRPC
    /// service passes such a call on as bytes.
    fn decodes(&self, _path: &str) -> bool {
        false
    }
    fn create_event(
        &self,
        req: pb::CreateEventRequest,
        call: Call,
    ) -> impl Future<Output = Result<pb::Event, Error>> + Send;
    fn list_events(
        &self,
        req: pb::ListEventsRequest,
        call: Call,
    ) -> impl Future<Output = Result<pb::ListEventsResponse, Error>> + Send;
    fn get_event(
        &self,
        req: pb::GetEventRequest,
        call: Call,
    ) -> impl Future<Output = Result<pb::Event, Error>> + Send;
    fn set_sale(
        &self,
        req: pb::SetSaleRequest,
        call: Call,
    ) -> impl Future<Output = Result<pb::Event, Error>> + Send;
    fn get_seat_map(
        &self,
        req: pb::GetSeatMapRequest,
        call: Call,
    ) -> impl Future<Output = Result<pb::SeatMap, Error>> + Send;
    fn hold(
        &self,
        req: pb::HoldRequest,
        call: Call,
    ) -> impl Future<Output = Result<pb::Hold, Error>> + Send;
    fn hold_many(
        &self,
        req: pb::HoldManyRequest,
        call: Call,
    ) -> impl Future<Output = Result<pb::HoldManyResponse, Error>> + Send;
    fn commit(
        &self,
        req: pb::CommitRequest,
        call: Call,
    ) -> impl Future<Output = Result<pb::Order, Error>> + Send;
    fn release(
        &self,
        req: pb::ReleaseRequest,
        call: Call,
    ) -> impl Future<Output = Result<pb::Hold, Error>> + Send;
    fn get_hold(
        &self,
        req: pb::GetHoldRequest,
        call: Call,
    ) -> impl Future<Output = Result<pb::Hold, Error>> + Send;
    fn get_order(
        &self,
        req: pb::GetOrderRequest,
        call: Call,
    ) -> impl Future<Output = Result<pb::Order, Error>> + Send;
    fn list_holds(
        &self,
        req: pb::ListHoldsRequest,
        call: Call,
    ) -> impl Future<Output = Result<pb::ListHoldsResponse, Error>> + Send;
    fn cluster_status(
        &self,
        req: pb::ClusterStatusRequest,
    ) -> impl Future<Output = Result<pb::ClusterStatus, Error>> + Send;
}

/// Implements [`SeatsApi`]'s routed methods for a type by calling, for each listed
/// method, the method of the same name on what `$to` gives for `self` (an inherent
/// method, or the wrapped API's).
#[macro_export]
macro_rules! delegate_seats_api {
    (|$this:ident| $to:expr; $($method:ident($req:ty) -> $reply:ty;)*) => {
        $(
            async fn $method(
                &self,
                req: $req,
                call: $crate::forward::Call,
            ) -> Result<$reply, $crate::error::Error> {
                let $this = self;
                $to.$method(req, call).await
            }
        )*
    };
}

/// The client API, typed: what the gRPC service (`service`) calls, and what the HTTP
/// API will call.
#[derive(Clone)]
pub struct Api {
    node: Arc<Process>,
}

impl Api {
    pub fn new(node: Arc<Process>) -> Self {
        Self { node }
    }
}

/// The user a call acts as, in `user`: a buyer acts as themself (filled in when the
/// request names nobody; naming another user is PERMISSION_DENIED). An operator acts
/// as the request says (for a box office), or as themself when it names nobody. When
/// tokens are not checked, the request says.
pub(crate) fn acting_user(call: &Call, user: &mut String) -> Result<(), Error> {
    let Some(id) = call.identity() else {
        return Ok(());
    };
    if user.is_empty() {
        user.clone_from(&id.subject);
    } else if id.role == Role::Buyer && *user != id.subject {
        return Err(Error::PermissionDenied(format!(
            "{:?} may act only as themself, not as {user:?}",
            id.subject
        )));
    }
    Ok(())
}

/// Who the call's verified token names, for the audit trail of the command it makes.
fn actor(call: &Call) -> Option<raft_store::Actor> {
    call.identity().map(|id| raft_store::Actor {
        subject: id.subject.clone(),
        role: match id.role {
            Role::Buyer => raft_store::ActorRole::Buyer,
            Role::Operator => raft_store::ActorRole::Operator,
        },
    })
}

/// Whether the call comes from a buyer (whose view is limited): only then is a hold's
/// owner read before acting on it, so calls without tokens pay no extra read.
fn is_buyer(call: &Call) -> bool {
    call.identity().is_some_and(|id| id.role == Role::Buyer)
}

/// Hides what a buyer may not see: another user's hold or order (owned by `owner`) is
/// NOT_FOUND, worded as a missing one, so ids cannot be probed.
fn visible_to(call: &Call, owner: &str, what: &str) -> Result<(), Error> {
    match call.identity() {
        Some(id) if id.role == Role::Buyer && id.subject != owner => {
            Err(Error::Refused(Refusal::NotFound(what.to_string())))
        }
        _ => Ok(()),
    }
}

/// Waits for a linearizable read point on `shard`, then runs `f`.
async fn consistent<T>(
    node: &Process,
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
    node: Arc<Process>,
    shard: u32,
    req: pb::ListEventsRequest,
    call: Call,
) -> Result<Vec<pb::Event>, Error> {
    let limit = req.limit as usize;
    let mut forwarded_req = req.clone();
    forwarded_req.shard = Some(shard);
    let out = Outbound::message(paths::LIST_EVENTS, &forwarded_req, None);
    node.routed(shard, Mode::Leader, &call, &out, |s| {
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
    })
    .await
    .map(|r: pb::ListEventsResponse| r.events)
}

impl Api {
    /// Proposes `command` on its shard's leader (here or forwarded) and turns the
    /// state machine's reply into the answer with `answer`.
    async fn write<T: Answer>(
        &self,
        shard: u32,
        call: Call,
        command: Command,
        answer: impl Fn(&Shard, Reply) -> Result<T, Error>,
        out: Outbound,
    ) -> Result<T, Error> {
        let answer = &answer;
        self.node
            .routed(shard, Mode::Leader, &call, &out, |s| {
                let command = command.clone();
                async move {
                    let reply = s.propose(command).await??;
                    answer(&s, reply)
                }
            })
            .await
    }

    /// Runs `read` on the shard's leader (here or forwarded) once a linearizable read
    /// point has been applied.
    async fn read<T, F>(
        &self,
        shard: u32,
        call: Call,
        read: Arc<F>,
        out: Outbound,
    ) -> Result<T, Error>
    where
        T: Answer + Send + 'static,
        F: Fn(&Shard) -> Result<T, Error> + Send + Sync + 'static,
    {
        let (node, read) = (&self.node, &read);
        node.routed(shard, Mode::Leader, &call, &out, |s| async move {
            consistent(node, &s, |_| ()).await?;
            read_off_worker(read.clone(), s).await
        })
        .await
    }
}

impl SeatsApi for Api {
    fn node(&self) -> &Arc<Process> {
        &self.node
    }

    async fn create_event(
        &self,
        mut req: pb::CreateEventRequest,
        call: Call,
    ) -> Result<pb::Event, Error> {
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
            // Drawn here and discarded unless this process is the leader that proposes
            // it (a forwarder sends the request's bytes on, not this command).
            id_key: crate::ids::event_id_key()?,
            by: actor(&call),
        };
        // The caps, where the call enters: the layout's counts and lengths (cheap, no
        // plan built), then the command's encoded size. `apply` checks them again.
        def.check_limits()?;
        let seats = def.layout.capacity() as usize;
        let command = Command::CreateEvent(def);
        check_command_bytes(&command)?;
        let shard = self.node.cluster.shard_of(&event);
        let answer = &|s: &Shard, reply: Reply| match reply {
            Reply::EventCreated { .. } => summary(s, &event),
            other => Err(Error::unexpected(other)),
        };
        let out = Outbound::message(paths::CREATE_EVENT, &req, Some(&event));
        let event = &event;
        self.node
            .routed(shard, Mode::Leader, &call, &out, |s| {
                let command = command.clone();
                async move {
                    // A clear answer on the leader when the shard is full; `apply`
                    // decides (another creation may take the room meanwhile).
                    s.reader.read(|m| m.check_room(event, seats))?;
                    let reply = s.propose(command).await??;
                    answer(&s, reply)
                }
            })
            .await
    }

    async fn list_events(
        &self,
        mut req: pb::ListEventsRequest,
        call: Call,
    ) -> Result<pb::ListEventsResponse, Error> {
        Limit::TextBytes.check(req.q.len())?;
        req.limit = match req.limit {
            0 => EVENTS_PER_LIST_DEFAULT,
            n => n.min(EVENTS_PER_LIST_MAX),
        };
        let shards: Vec<u32> = match req.shard {
            Some(s) => vec![s],
            None => (0..self.node.cluster.shards()).collect(),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for shard in shards {
            tasks.spawn(list_shard(
                self.node.clone(),
                shard,
                req.clone(),
                call.clone(),
            ));
        }
        let mut events = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let found = joined.map_err(|e| Error::Internal(format!("list task: {e}")))??;
            events.extend(found);
        }
        events.sort_by(|a, b| (a.starts_at_ms, &a.event_id).cmp(&(b.starts_at_ms, &b.event_id)));
        events.truncate(req.limit as usize);
        Ok(pb::ListEventsResponse {
            events,
            cache_age_ms: 0,
        })
    }

    async fn get_event(&self, req: pb::GetEventRequest, call: Call) -> Result<pb::Event, Error> {
        let event = convert::event_id(&req.event_id)?;
        let shard = self.node.cluster.shard_of(&event);
        let out = Outbound::message(paths::GET_EVENT, &req, Some(&event));
        let read = Arc::new(move |s: &Shard| summary(s, &event));
        self.read(shard, call, read, out).await
    }

    async fn set_sale(&self, req: pb::SetSaleRequest, call: Call) -> Result<pb::Event, Error> {
        let event = convert::event_id(&req.event_id)?;
        let command = Command::SetSale {
            event_id: event.clone(),
            sale: convert::sale(req.sale)?,
            by: actor(&call),
        };
        let shard = self.node.cluster.shard_of(&event);
        let out = Outbound::message(paths::SET_SALE, &req, Some(&event));
        let answer = |s: &Shard, reply| match reply {
            Reply::SaleSet { .. } => summary(s, &event),
            other => Err(Error::unexpected(other)),
        };
        self.write(shard, call, command, answer, out).await
    }

    async fn get_seat_map(
        &self,
        req: pb::GetSeatMapRequest,
        call: Call,
    ) -> Result<pb::SeatMap, Error> {
        let event = convert::event_id(&req.event_id)?;
        let part = convert::seat_map_part(&req)?;
        let shard = self.node.cluster.shard_of(&event);
        // A stale read goes on without routing metadata: the next process (a
        // frontend's cache, any replica) may answer it, not only the leader.
        let routing = (!req.stale_ok).then_some(&event);
        let out = Outbound::message(paths::GET_SEAT_MAP, &req, routing);
        let read = Arc::new(move |s: &Shard| {
            let map = s.reader.read(|m| m.seat_map_part(&event, &part))?;
            Ok(convert::whole_map_within_reply(convert::seat_map_to_pb(
                &map, s.id,
            ))?)
        });
        if !req.stale_ok {
            return self.read(shard, call, read, out).await;
        }
        // Any replica may do; the map names the log index it reflects.
        self.node
            .routed(shard, Mode::AnyReplica, &call, &out, |s| {
                read_off_worker(read.clone(), s)
            })
            .await
    }

    async fn hold(&self, mut req: pb::HoldRequest, call: Call) -> Result<pb::Hold, Error> {
        acting_user(&call, &mut req.user_id)?;
        let (shard, event) = validate_hold(&self.node, &mut req)?;
        let command = hold_command(&event, &req);
        let out = Outbound::message(paths::HOLD, &req, Some(&event));
        let node = &self.node;
        let verdicts = holds::Verdicts::default();
        let verdict = &verdicts;
        node.routed(shard, Mode::Leader, &call, &out, |s| {
            let (command, user) = (command.clone(), &req.user_id);
            async move {
                if !verdict.of(node, std::iter::once(user.as_str()))[0] {
                    return Err(holds::rate_limited(node, user));
                }
                match s.propose(command).await?? {
                    Reply::Held(h) => Ok(convert::hold_to_pb(&h)),
                    other => Err(Error::unexpected(other)),
                }
            }
        })
        .await
    }

    async fn hold_many(
        &self,
        request: pb::HoldManyRequest,
        call: Call,
    ) -> Result<pb::HoldManyResponse, Error> {
        holds::hold_many(&self.node, request, call).await
    }

    async fn commit(&self, mut req: pb::CommitRequest, call: Call) -> Result<pb::Order, Error> {
        let hold = convert::hold_id(&req.hold_id)?;
        raft_store::ids::validate_token("payment token", &req.payment_token)
            .map_err(Error::Invalid)?;
        Limit::TokenBytes.check(req.idempotency_key.len())?;
        if req.idempotency_key.is_empty() {
            req.idempotency_key = self.node.fresh_id("k");
        }
        let shard = self.node.cluster.shard_of(&hold.event);
        let out = Outbound::message(paths::COMMIT, &req, Some(&hold.event));
        let node = &self.node;
        let call_ = &call;
        node.routed(shard, Mode::Leader, &call, &out, |s| {
            let (hold, token, key) = (
                hold.clone(),
                req.payment_token.clone(),
                req.idempotency_key.clone(),
            );
            async move {
                // A buyer pays only for their own hold; another's is not found.
                if is_buyer(call_) {
                    visible_to(call_, &s.reader.hold(&hold)??.user, &format!("hold {hold}"))?;
                }
                let order = crate::shard::checkout::run(
                    &s,
                    node.gateway.as_ref(),
                    node.settings.payment_timeout,
                    crate::shard::checkout::Checkout {
                        hold,
                        token,
                        key,
                        by: actor(call_),
                    },
                )
                .await?;
                Ok(convert::order_to_pb(&order))
            }
        })
        .await
    }

    async fn release(&self, mut req: pb::ReleaseRequest, call: Call) -> Result<pb::Hold, Error> {
        let hold = convert::hold_id(&req.hold_id)?;
        acting_user(&call, &mut req.user_id)?;
        Limit::TokenBytes.check(req.user_id.len())?;
        let command = Command::Release {
            hold: hold.clone(),
            user: req.user_id.clone(),
            by: actor(&call),
        };
        let shard = self.node.cluster.shard_of(&hold.event);
        let out = Outbound::message(paths::RELEASE, &req, Some(&hold.event));
        let (hold, call_) = (&hold, &call);
        self.node
            .routed(shard, Mode::Leader, &call, &out, |s| {
                let command = command.clone();
                async move {
                    // Another buyer's hold is not found, not "not yours".
                    if is_buyer(call_) {
                        visible_to(call_, &s.reader.hold(hold)??.user, &format!("hold {hold}"))?;
                    }
                    match s.propose(command).await?? {
                        Reply::Released { .. } => Ok(convert::hold_to_pb(&s.reader.hold(hold)??)),
                        other => Err(Error::unexpected(other)),
                    }
                }
            })
            .await
    }

    async fn get_hold(&self, req: pb::GetHoldRequest, call: Call) -> Result<pb::Hold, Error> {
        let hold = convert::hold_id(&req.hold_id)?;
        let shard = self.node.cluster.shard_of(&hold.event);
        let out = Outbound::message(paths::GET_HOLD, &req, Some(&hold.event));
        // `hold` also finds holds whose records live only on disk.
        let read = Arc::new(move |s: &Shard| Ok(convert::hold_to_pb(&s.reader.hold(&hold)??)));
        let found: pb::Hold = self.read(shard, call.clone(), read, out).await?;
        visible_to(&call, &found.user_id, &format!("hold {}", found.hold_id))?;
        Ok(found)
    }

    async fn get_order(&self, req: pb::GetOrderRequest, call: Call) -> Result<pb::Order, Error> {
        let order = convert::order_id(&req.order_id)?;
        let shard = self.node.cluster.shard_of(&order.event);
        let out = Outbound::message(paths::GET_ORDER, &req, Some(&order.event));
        let read = Arc::new(move |s: &Shard| {
            let o = s.reader.read(|m| m.order(&order))?;
            Ok(convert::order_to_pb(&o))
        });
        let found: pb::Order = self.read(shard, call.clone(), read, out).await?;
        visible_to(&call, &found.user_id, &format!("order {}", found.order_id))?;
        Ok(found)
    }

    async fn list_holds(
        &self,
        req: pb::ListHoldsRequest,
        call: Call,
    ) -> Result<pb::ListHoldsResponse, Error> {
        let event = convert::event_id(&req.event_id)?;
        let limit = match req.limit {
            0 => HOLDS_PER_LIST_DEFAULT,
            n => n.min(HOLDS_PER_LIST_MAX),
        };
        let shard = self.node.cluster.shard_of(&event);
        let out = Outbound::message(paths::LIST_HOLDS, &req, Some(&event));
        let after = req.after;
        let read = Arc::new(move |s: &Shard| {
            let (ids, more) = s
                .reader
                .read(|m| m.hold_ids(&event, after, u64::from(limit)))?;
            let next_after = ids.last().map(|id| id.seq).filter(|_| more);
            let mut holds = Vec::with_capacity(ids.len());
            for id in &ids {
                match s.reader.hold(id)? {
                    Ok(view) => holds.push(convert::hold_to_pb(&view)),
                    // Purged by retention: nothing left to show.
                    Err(raft_store::Refusal::NotFound(_)) => {}
                    Err(other) => return Err(Error::Refused(other)),
                }
            }
            Ok(pb::ListHoldsResponse { holds, next_after })
        });
        self.read(shard, call, read, out).await
    }

    async fn cluster_status(
        &self,
        req: pb::ClusterStatusRequest,
    ) -> Result<pb::ClusterStatus, Error> {
        if req.local {
            // No digest on the client port: it reads a shard's whole state, so only
            // peers may ask for it (over the peer port).
            return Ok(local_status(&self.node, false));
        }
        let nodes: Vec<NodeId> = self.node.cluster.nodes().keys().copied().collect();
        let views = peer_views(&self.node, &nodes, Duration::from_millis(1_000)).await?;
        Ok(merge_views(&self.node, views))
    }
}
