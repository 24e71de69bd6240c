//! seatd's Rust client library, and the `seatctl` command line built on it.
//!
//! A [`Client`] talks to a list of endpoints: frontends (`seatd frontend`, `seatd
//! dev`) or nodes (`seatd node`); any of them serves any call. Every call has a
//! deadline. A call that fails in a way that may be temporary (UNAVAILABLE, a timeout,
//! a lost connection) is tried again against the next endpoint, after a backoff with
//! jitter, until the retry budget is spent. A server's INTERNAL or UNKNOWN is not: it
//! is a bug, and a retry with the same keys would only repeat it ([`Error::Internal`]).
//!
//! Retries never hold or charge twice: a hold carries a client reservation id and a
//! commit an idempotency key, generated here when the caller gives none, and the
//! retry sends the very same ones, so the cluster answers it with the first decision.
//!
//! Concurrent holds are gathered into `HoldMany` calls (each hold still decided and
//! answered on its own; no timer, so a lone hold goes at once), one call out at a
//! time while calls answer promptly: under a flash sale that is far fewer calls, and
//! fewer log entries, for the same decisions ([`Options::batch_holds`]). Given
//! several node endpoints, the client can send each batch straight to the node that
//! leads its event's shard, learnt from the cluster status
//! ([`Options::route_to_leaders`], off by default).
//!
//! ```
//! # // A whole local cluster (3 replicas and a frontend) for the example to talk to.
//! # let rt = tokio::runtime::Runtime::new().unwrap();
//! # rt.block_on(async {
//! # let dir = tempfile::tempdir().unwrap();
//! # let dev = coordinator::dev::DevCluster::start(coordinator::dev::DevConfig::for_tests(dir.path())).await.unwrap();
//! # let endpoint = dev.endpoint();
//! # let token = dev.tokens().unwrap().operator.clone();
//! use seatd_client::{Client, Error, Options};
//!
//! // An operator's token (a box office) may act for any user; a buyer's token acts
//! // only as its subject. `seatd dev` prints both.
//! let client = Client::with_token([endpoint.as_str()], Options::default(), Some(&token))?;
//! let map = client.seat_map("demo", false).await?;
//! println!("{} seats", map.seats.len());
//!
//! let hold = client.hold("demo", "ada", &["A-1", "A-2"], None, None).await?;
//! let order = client.commit(&hold.hold_id, "tok_visa", None).await?;
//! assert_eq!(order.seat_ids, ["A-1", "A-2"]);
//!
//! // Somebody else wants A-2: a conflict that names it.
//! match client.hold("demo", "bob", &["A-2", "A-3"], None, None).await {
//!     Err(Error::Conflict { seats, .. }) => assert_eq!(seats, ["A-2"]),
//!     other => panic!("{other:?}"),
//! }
//! # dev.shutdown().await.unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod error;
pub mod limits;
mod route;

use limits::{
    BATCH_YIELDS_MAX, HOLDS_PER_BATCH_MAX, HOLD_CALLS_IN_FLIGHT_MAX, HOLD_CALL_OVERDUE,
    QUEUED_HOLDS_MAX, REPLY_BYTES_MAX,
};

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use error::Error;
pub use seatd_proto::v1 as pb;
use seatd_proto::v1::seats_client::SeatsClient;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tonic::transport::{Channel, Endpoint};

/// Where a `seatctl` with no `--endpoint` connects: the frontend `seatd dev` runs.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7400";

/// A venue layout's wire form, and a hold state's stable name (shared with the
/// server, in `seatd-wire`).
pub use seatd_wire::{hold_state_name, layout_to_pb};

/// Deadlines and retry policy.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// Total time a call may spend on attempts and backoff before it gives up.
    pub retry_budget: Duration,
    /// First backoff; it doubles per attempt up to `backoff_max`, with full jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Send concurrent holds together in `HoldMany` calls, each still decided and
    /// answered on its own (on by default): far fewer calls under load, no added
    /// delay for a lone hold. A hold that arrives while a call is out waits for it
    /// (one round trip, or until that call is overdue) and goes in the next call.
    pub batch_holds: bool,
    /// Send batched holds straight to their shard's leader when it is one of the
    /// endpoints (see the `route` module). Any endpoint serves any call, so this only
    /// saves the hop a node would make to forward the batch. Off by default: it asks
    /// for the cluster-wide status every second while holds flow, and `seatctl bench`
    /// measured no more throughput with it than round-robin over the nodes (see
    /// README.md).
    pub route_to_leaders: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(10),
            retry_budget: Duration::from_secs(30),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            batch_holds: true,
            route_to_leaders: false,
        }
    }
}

/// What a client shows and whom it trusts.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// A bearer token (JWT), sent with every call as `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// PEM certificates of the CA that signed the servers' certificates, trusted for
    /// `https://` endpoints on top of the system's roots (a cluster's private CA).
    pub ca_pem: Option<Vec<u8>>,
}

impl Access {
    fn tls(&self) -> tonic::transport::ClientTlsConfig {
        let tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
        match &self.ca_pem {
            Some(pem) => tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            None => tls,
        }
    }
}

/// A connection to a seatd cluster through one or more endpoints.
pub struct Client {
    transport: Arc<Transport>,
    ids: IdSource,
    /// Concurrent holds, gathered into `HoldMany` calls (see [`Options::batch_holds`]).
    holds: Option<mpsc::Sender<QueuedHold>>,
}

/// The endpoints, and how calls to them are retried.
struct Transport {
    endpoints: Vec<(String, SeatsClient<Channel>)>,
    options: Options,
    /// `Bearer <token>`, sent with every call when the client has a token.
    bearer: Option<tonic::metadata::AsciiMetadataValue>,
    next: AtomicUsize,
    routes: route::Routes,
}

/// A hold waiting for a batch, and where its answer goes. An answer that may be
/// retried (UNAVAILABLE) brings the request back, so a hold is never copied to be
/// retried.
type QueuedHold = (pb::HoldRequest, oneshot::Sender<HoldAnswer>);
type HoldAnswer = (Result<pb::Hold, Error>, Option<pb::HoldRequest>);

/// Retry keys unique to this client: a random prefix and a counter.
struct IdSource {
    prefix: String,
    counter: AtomicU64,
}

impl IdSource {
    fn next(&self, kind: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{kind}-{}-{n}", self.prefix)
    }
}

fn normalise(endpoint: &str) -> String {
    seatd_wire::net::endpoint_url(endpoint).unwrap_or_default()
}

impl Client {
    /// A client for `endpoints` (URLs like `http://127.0.0.1:7400`, or `host:port`),
    /// with default [`Options`]. Connections are made on first use, by tasks of the
    /// Tokio runtime this is called in (it must be called inside one).
    pub fn new<I, S>(endpoints: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_options(endpoints, Options::default())
    }

    pub fn with_options<I, S>(endpoints: I, options: Options) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_token(endpoints, options, None)
    }

    /// [`Client::with_options`] that sends `token` (a JWT from the identity provider,
    /// or `seatd token issue`) as `authorization: Bearer <token>` with every call.
    pub fn with_token<I, S>(
        endpoints: I,
        options: Options,
        token: Option<&str>,
    ) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let access = Access {
            token: token.map(str::to_string),
            ca_pem: None,
        };
        Self::connect(endpoints, options, &access)
    }

    /// A client with a token and, for `https://` endpoints, the CA to trust (see
    /// [`Access`]).
    pub fn connect<I, S>(endpoints: I, options: Options, access: &Access) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let bearer = access
            .token
            .as_ref()
            .map(|t| format!("Bearer {}", t.trim()).parse())
            .transpose()
            .map_err(|_| Error::Invalid("the token is not printable ASCII".into()))?;
        let mut list = Vec::new();
        for e in endpoints {
            let url = normalise(e.as_ref());
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|err| Error::Invalid(format!("endpoint {url:?}: {err}")))?;
            if url.starts_with("https://") {
                endpoint = endpoint
                    .tls_config(access.tls())
                    .map_err(|err| Error::Invalid(format!("endpoint {url:?}: {err}")))?;
            }
            let channel = endpoint
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .connect_lazy();
            let client = SeatsClient::new(channel)
                .max_decoding_message_size(REPLY_BYTES_MAX)
                .max_encoding_message_size(REPLY_BYTES_MAX);
            list.push((url, client));
        }
        if list.is_empty() {
            return Err(Error::Invalid("no endpoints given".into()));
        }
        let start = fastrand::usize(..list.len());
        let route = options.batch_holds && options.route_to_leaders && list.len() > 1;
        let transport = Arc::new(Transport {
            endpoints: list,
            options,
            bearer,
            next: AtomicUsize::new(start),
            routes: route::Routes::new(route),
        });
        let holds = options.batch_holds.then(|| {
            let (tx, rx) = mpsc::channel(QUEUED_HOLDS_MAX);
            tokio::spawn(batch_holds(transport.clone(), rx));
            tx
        });
        Ok(Self {
            transport,
            ids: IdSource {
                prefix: format!("{:016x}", fastrand::u64(..)),
                counter: AtomicU64::new(0),
            },
            holds,
        })
    }

    async fn call<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(SeatsClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.transport.call(call).await
    }
}

impl Transport {
    /// Runs one call with deadlines and retries; `call` is given the next endpoint's
    /// client and must send the same request every time.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(SeatsClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_at(None, call).await
    }

    /// The cluster-wide status (no digests), with retries.
    async fn status(&self) -> Result<pb::ClusterStatus, Error> {
        self.call(|mut c| async move {
            c.cluster_status(pb::ClusterStatusRequest {
                local: false,
                digest: false,
            })
            .await
        })
        .await
    }

    /// [`Transport::call`] whose first attempt goes to endpoint `first` when given (a
    /// shard leader); later attempts go round-robin.
    async fn call_at<T, F, Fut>(&self, mut first: Option<usize>, call: F) -> Result<T, Error>
    where
        F: Fn(SeatsClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut backoff =
            seatd_wire::net::Backoff::new(self.options.backoff_min, self.options.backoff_max);
        loop {
            let i = first
                .take()
                .unwrap_or_else(|| self.next.load(Ordering::Relaxed))
                % self.endpoints.len();
            let (url, client) = &self.endpoints[i];
            let attempt = tokio::time::timeout(self.options.attempt_timeout, call(client.clone()));
            let failure = match attempt.await {
                Ok(Ok(reply)) => return Ok(reply.into_inner()),
                Ok(Err(status)) => match Error::from_status(&status) {
                    Error::Unavailable(m) => format!("{url}: {m}"),
                    other => return Err(other),
                },
                Err(_) => format!(
                    "{url}: no answer within {} ms",
                    self.options.attempt_timeout.as_millis()
                ),
            };
            // The next attempt goes to the next endpoint, and batches stop going here
            // until the routes are refreshed.
            self.routes.forget(i);
            let _ = self
                .next
                .compare_exchange(i, i + 1, Ordering::Relaxed, Ordering::Relaxed);
            let jittered = backoff.next_jittered(fastrand::f64());
            if started.elapsed() + jittered >= self.options.retry_budget {
                return Err(Error::Unavailable(format!(
                    "gave up after {} ms: {failure}",
                    started.elapsed().as_millis()
                )));
            }
            tokio::time::sleep(jittered).await;
        }
    }
}

/// The routing metadata of a call about `event` (see `seatd_wire::routing`): lets a
/// node or frontend that only forwards the call pass it on undecoded. A hint only;
/// an id that cannot be metadata goes without.
fn route_to(event: Option<String>) -> Option<tonic::metadata::AsciiMetadataValue> {
    event.and_then(|e| e.parse().ok())
}

/// `message` as a request carrying the routing metadata `route` and the bearer token.
fn routed<T>(
    message: T,
    route: &Option<tonic::metadata::AsciiMetadataValue>,
    bearer: &Option<tonic::metadata::AsciiMetadataValue>,
) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(event) = route {
        r.metadata_mut()
            .insert(seatd_wire::routing::EVENT_METADATA, event.clone());
    }
    if let Some(bearer) = bearer {
        r.metadata_mut().insert("authorization", bearer.clone());
    }
    r
}

impl Client {
    /// Creates an event (a no-op that succeeds when the same event exists).
    pub async fn create_event(&self, request: pb::CreateEventRequest) -> Result<pb::Event, Error> {
        let route = route_to((!request.event_id.is_empty()).then(|| request.event_id.clone()));
        self.call(|mut c| {
            let r = routed(request.clone(), &route, &self.transport.bearer);
            async move { c.create_event(r).await }
        })
        .await
    }

    pub async fn list_events(
        &self,
        request: pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse, Error> {
        self.call(|mut c| {
            let r = routed(request.clone(), &None, &self.transport.bearer);
            async move { c.list_events(r).await }
        })
        .await
    }

    pub async fn event(&self, event_id: &str) -> Result<pb::Event, Error> {
        let r = pb::GetEventRequest {
            event_id: event_id.into(),
        };
        let route = route_to(Some(event_id.to_string()));
        self.call(|mut c| {
            let r = routed(r.clone(), &route, &self.transport.bearer);
            async move { c.get_event(r).await }
        })
        .await
    }

    pub async fn set_sale(&self, event_id: &str, sale: pb::SaleState) -> Result<pb::Event, Error> {
        let r = pb::SetSaleRequest {
            event_id: event_id.into(),
            sale: sale as i32,
        };
        let route = route_to(Some(event_id.to_string()));
        self.call(|mut c| {
            let r = routed(r.clone(), &route, &self.transport.bearer);
            async move { c.set_sale(r).await }
        })
        .await
    }

    /// An event's seat map: linearizable, or (`stale_ok`) from any replica or a
    /// frontend's cache, marked with the log index it reflects and its age.
    pub async fn seat_map(&self, event_id: &str, stale_ok: bool) -> Result<pb::SeatMap, Error> {
        let r = pb::GetSeatMapRequest {
            event_id: event_id.into(),
            stale_ok,
            ..Default::default()
        };
        let route = route_to((!stale_ok).then(|| event_id.to_string()));
        self.call(|mut c| {
            let r = routed(r.clone(), &route, &self.transport.bearer);
            async move { c.get_seat_map(r).await }
        })
        .await
    }

    /// Part of an event's seat map, as `request` asks: one section's seats
    /// (`section`), and at most `page_size` seats per answer from `page_token` (the
    /// previous answer's `next_page_token`; empty for the first page). The last page
    /// has an empty `next_page_token`. Each page is read on its own, at the log index
    /// it names.
    pub async fn seat_map_part(
        &self,
        request: pb::GetSeatMapRequest,
    ) -> Result<pb::SeatMap, Error> {
        let route = route_to((!request.stale_ok).then(|| request.event_id.clone()));
        self.call(|mut c| {
            let r = routed(request.clone(), &route, &self.transport.bearer);
            async move { c.get_seat_map(r).await }
        })
        .await
    }

    /// Holds `seats` for `user`, all or none. `reservation_id` is the retry key (one is
    /// generated when `None`); `ttl` `None` takes the event's default.
    pub async fn hold(
        &self,
        event_id: &str,
        user: &str,
        seats: &[&str],
        ttl: Option<Duration>,
        reservation_id: Option<&str>,
    ) -> Result<pb::Hold, Error> {
        self.hold_request(pb::HoldRequest {
            event_id: event_id.into(),
            user_id: user.into(),
            seat_ids: seats.iter().map(|s| s.to_string()).collect(),
            client_reservation_id: reservation_id.map(str::to_string).unwrap_or_default(),
            ttl_ms: ttl.map(|t| t.as_millis() as u64),
            expected_versions: Vec::new(),
        })
        .await
    }

    /// [`Client::hold`] with every field of the request (compare-and-set versions).
    pub async fn hold_request(&self, mut request: pb::HoldRequest) -> Result<pb::Hold, Error> {
        if request.client_reservation_id.is_empty() {
            request.client_reservation_id = self.ids.next("r");
        }
        let Some(queue) = &self.holds else {
            let route = route_to(Some(request.event_id.clone()));
            return self
                .call(|mut c| {
                    let r = routed(request.clone(), &route, &self.transport.bearer);
                    async move { c.hold(r).await }
                })
                .await;
        };
        // Batched: an item the cluster could not decide (UNAVAILABLE) goes again in a
        // later batch, with the same reservation id, until the retry budget is spent.
        // The whole wait is bounded too (queueing behind other batches included): a
        // caller that gives up takes its hold out of any batch not yet sent, and one
        // already sent may or may not have been decided, which UNAVAILABLE says.
        let options = self.transport.options;
        let bound = options.retry_budget + options.attempt_timeout;
        tokio::time::timeout(bound, self.hold_batched(queue, request))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "no answer within {} ms; retry with the same reservation id",
                    bound.as_millis()
                )))
            })
    }

    async fn hold_batched(
        &self,
        queue: &mpsc::Sender<QueuedHold>,
        request: pb::HoldRequest,
    ) -> Result<pb::Hold, Error> {
        let options = self.transport.options;
        let started = Instant::now();
        let mut backoff = seatd_wire::net::Backoff::new(options.backoff_min, options.backoff_max);
        let stopped = || Error::Unavailable("the hold batcher stopped".into());
        let mut request = request;
        loop {
            let (tx, rx) = oneshot::channel();
            if queue.send((request, tx)).await.is_err() {
                return Err(stopped());
            }
            let (answer, back) = rx.await.unwrap_or_else(|_| (Err(stopped()), None));
            match (answer, back) {
                (Err(Error::Unavailable(m)), Some(back)) => {
                    request = back;
                    let jittered = backoff.next_jittered(fastrand::f64());
                    if started.elapsed() + jittered >= options.retry_budget {
                        return Err(Error::Unavailable(m));
                    }
                    tokio::time::sleep(jittered).await;
                }
                (answer, _) => return answer,
            }
        }
    }

    /// Pays for a hold and turns it into an order. `idempotency_key` is generated when
    /// `None`; a retry with the same key never charges twice.
    pub async fn commit(
        &self,
        hold_id: &str,
        payment_token: &str,
        idempotency_key: Option<&str>,
    ) -> Result<pb::Order, Error> {
        let r = pb::CommitRequest {
            hold_id: hold_id.into(),
            payment_token: payment_token.into(),
            idempotency_key: idempotency_key
                .map(str::to_string)
                .unwrap_or_else(|| self.ids.next("k")),
        };
        let route = route_to(seatd_wire::routing::event_of_hold(hold_id));
        self.call(|mut c| {
            let r = routed(r.clone(), &route, &self.transport.bearer);
            async move { c.commit(r).await }
        })
        .await
    }

    /// Gives a hold's seats back; `user` must own it.
    pub async fn release(&self, hold_id: &str, user: &str) -> Result<pb::Hold, Error> {
        let r = pb::ReleaseRequest {
            hold_id: hold_id.into(),
            user_id: user.into(),
        };
        let route = route_to(seatd_wire::routing::event_of_hold(hold_id));
        self.call(|mut c| {
            let r = routed(r.clone(), &route, &self.transport.bearer);
            async move { c.release(r).await }
        })
        .await
    }

    pub async fn hold_status(&self, hold_id: &str) -> Result<pb::Hold, Error> {
        let r = pb::GetHoldRequest {
            hold_id: hold_id.into(),
        };
        let route = route_to(seatd_wire::routing::event_of_hold(hold_id));
        self.call(|mut c| {
            let r = routed(r.clone(), &route, &self.transport.bearer);
            async move { c.get_hold(r).await }
        })
        .await
    }

    /// One page of an event's holds, numbered above `after` (0: from the first), at
    /// most `limit` (0: the server's default); operators only. The answer's
    /// `next_after` starts the next page.
    pub async fn list_holds(
        &self,
        event_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<pb::ListHoldsResponse, Error> {
        let r = pb::ListHoldsRequest {
            event_id: event_id.into(),
            after,
            limit,
        };
        let route = route_to(Some(event_id.to_string()));
        self.call(|mut c| {
            let r = routed(r.clone(), &route, &self.transport.bearer);
            async move { c.list_holds(r).await }
        })
        .await
    }

    pub async fn order(&self, order_id: &str) -> Result<pb::Order, Error> {
        let r = pb::GetOrderRequest {
            order_id: order_id.into(),
        };
        let route = route_to(seatd_wire::routing::event_of_order(order_id));
        self.call(|mut c| {
            let r = routed(r.clone(), &route, &self.transport.bearer);
            async move { c.get_order(r).await }
        })
        .await
    }

    /// Nodes, and each shard's leader, members and applied index.
    pub async fn status(&self) -> Result<pb::ClusterStatus, Error> {
        self.transport.status().await
    }
}

/// Gathers queued holds into `HoldMany` calls: takes the first, waits for its turn
/// (the previous call answered, or [`HOLD_CALL_OVERDUE`] passed), then takes whatever
/// else is queued (up to `HOLDS_PER_BATCH_MAX`). No timer while calls answer in time:
/// a lone hold goes at once, and under load batches grow while a call is in flight. A
/// batch is split by the endpoint that leads each hold's shard, when the routes know
/// it (see the `route` module). Ends when the client is dropped.
async fn batch_holds(transport: Arc<Transport>, mut rx: mpsc::Receiver<QueuedHold>) {
    let turns = CallTurns::new(HOLD_CALLS_IN_FLIGHT_MAX, HOLD_CALL_OVERDUE);
    while let Some(first) = rx.recv().await {
        let full = rx.len() + 1 >= HOLDS_PER_BATCH_MAX;
        let slot = turns.next(!full).await;
        // When the turn was handed over, the call that gave it up has just woken its
        // callers, and they are about to queue their next holds: let them, so they
        // ride in this batch rather than wait for the next. They may run on other
        // worker threads, so keep yielding while the queue grows (a few times at
        // most: no timer) and the batch is not full.
        for _ in 0..BATCH_YIELDS_MAX {
            let queued = rx.len();
            if queued + 1 >= HOLDS_PER_BATCH_MAX {
                break;
            }
            tokio::task::yield_now().await;
            if rx.len() == queued {
                break;
            }
        }
        let mut batch = vec![first];
        while batch.len() < HOLDS_PER_BATCH_MAX {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        // A caller that gave up while its hold waited must not get seats it will never
        // hear about (they would stay held until the hold expires).
        batch.retain(|(_, reply)| !reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        if transport.routes.begin_refresh(Instant::now()) {
            tokio::spawn(refresh_routes(transport.clone()));
        }
        // Usually one group: a flash sale is one event, so one shard.
        let mut groups: Vec<(Option<usize>, Vec<QueuedHold>)> = Vec::new();
        for q in batch {
            let at = transport.routes.endpoint_for(&q.0.event_id);
            match groups.iter_mut().find(|(g, _)| *g == at) {
                Some((_, group)) => group.push(q),
                None => groups.push((at, vec![q])),
            }
        }
        let slot = Arc::new(slot);
        for (at, group) in groups {
            tokio::spawn(send_holds(transport.clone(), at, group, slot.clone()));
        }
    }
}

/// Who may send the next `HoldMany` call: one call at a time has the turn, and a
/// call waits for it until the call holding it is overdue (counted from when that
/// call took the turn); at most `calls_max` calls are out at once, with or without
/// the turn.
struct CallTurns {
    slots: Arc<Semaphore>,
    turn: Arc<Semaphore>,
    overdue: Duration,
    /// When the turn was last taken: while it is held, when its call went out.
    turn_taken_at: std::sync::Mutex<Instant>,
}

/// A call's place: its slot, and the turn unless it went without (see [`CallTurns`]).
/// Dropping it lets the next call go.
type CallSlot = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

impl CallTurns {
    fn new(calls_max: usize, overdue: Duration) -> Self {
        assert!(calls_max >= 1, "at least one call must be allowed");
        Self {
            slots: Arc::new(Semaphore::new(calls_max)),
            turn: Arc::new(Semaphore::new(1)),
            overdue,
            turn_taken_at: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Waits until the next call may go: for a slot, then (if `wait_for_turn`) for
    /// the turn until the call holding it is overdue.
    async fn next(&self, wait_for_turn: bool) -> CallSlot {
        // Never closed: the semaphores live as long as `self`.
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("call slots are never closed");
        let wait = if wait_for_turn {
            let taken_at = *self.turn_taken_at.lock().unwrap_or_else(|p| p.into_inner());
            self.overdue.saturating_sub(taken_at.elapsed())
        } else {
            Duration::ZERO
        };
        // A free turn is taken at once. With no time left to wait, the call goes at
        // once without it: no timer, whose millisecond tick would make "at once" a
        // wait for the clock.
        let turn = match self.turn.clone().try_acquire_owned() {
            Ok(turn) => Some(turn),
            Err(_) if wait.is_zero() => None,
            Err(_) => tokio::time::timeout(wait, self.turn.clone().acquire_owned())
                .await
                .ok()
                .map(|t| t.expect("the call turn is never closed")),
        };
        if turn.is_some() {
            *self.turn_taken_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        (slot, turn)
    }
}

/// Asks the cluster who leads each shard, for [`batch_holds`].
async fn refresh_routes(transport: Arc<Transport>) {
    let status = transport.status().await;
    let urls: Vec<String> = transport.endpoints.iter().map(|(u, _)| u.clone()).collect();
    match status {
        Ok(s) => transport.routes.update(&s, &urls, Instant::now()),
        Err(_) => transport.routes.failed(Instant::now()),
    }
}

/// Sends one `HoldMany` call (first to endpoint `at`, when given) and answers each
/// hold's caller. `_slot` is the batch's call slot and turn, freed when its last call
/// ends.
async fn send_holds(
    transport: Arc<Transport>,
    at: Option<usize>,
    batch: Vec<QueuedHold>,
    _slot: Arc<CallSlot>,
) {
    let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    // Routing metadata only when the batch is about one event (a batch for several
    // is decoded where it enters, and split by shard there).
    let first = requests.first().map(|h| h.event_id.clone());
    let one_event = requests.iter().all(|h| Some(&h.event_id) == first.as_ref());
    let route = route_to(first.filter(|_| one_event));
    let request = pb::HoldManyRequest { holds: requests };
    let answer = transport
        .call_at(at, |mut c| {
            let r = routed(request.clone(), &route, &transport.bearer);
            async move { c.hold_many(r).await }
        })
        .await;
    let answers: Vec<Result<pb::Hold, Error>> = match answer {
        Ok(r) if r.results.len() == replies.len() => {
            r.results.into_iter().map(item_result).collect()
        }
        Ok(r) => {
            // A server bug, which the same batch again would repeat.
            let e = Error::Internal(format!(
                "{} answers for {} holds",
                r.results.len(),
                replies.len()
            ));
            vec![Err(e); replies.len()]
        }
        Err(e) => vec![Err(e); replies.len()],
    };
    // The request was only lent to the call: a hold that may be retried gets its
    // request back.
    for ((reply, answer), request) in replies.into_iter().zip(answers).zip(request.holds) {
        let back = matches!(answer, Err(Error::Unavailable(_))).then_some(request);
        let _ = reply.send((answer, back));
    }
}

/// One item of a `HoldMany` answer as a hold or an error.
fn item_result(r: pb::HoldResult) -> Result<pb::Hold, Error> {
    match r.result {
        Some(pb::hold_result::Result::Hold(h)) => Ok(h),
        Some(pb::hold_result::Result::Failure(f)) => {
            let details = prost::Message::encode_to_vec(&pb::ErrorReason {
                reason: f.reason,
                limit: f.limit_exceeded,
                seat_ids: f.seat_ids,
            });
            let status = tonic::Status::with_details(
                tonic::Code::from_i32(f.code),
                f.message,
                details.into(),
            );
            Err(Error::from_status(&status))
        }
        None => Err(Error::Internal("an empty hold result".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_cluster_is_unavailable_within_the_budget() {
        // A port probed free: nothing listens (connection refused at once).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::with_options(
            [
                format!("127.0.0.1:{port}"),
                format!("http://127.0.0.1:{port}"),
            ],
            Options {
                attempt_timeout: Duration::from_millis(200),
                retry_budget: Duration::from_millis(600),
                ..Options::default()
            },
        )
        .unwrap();
        let started = Instant::now();
        let e = client.event("x").await.unwrap_err();
        assert_eq!(e.code(), "unavailable", "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(Client::new(Vec::<String>::new()).is_err());
        assert!(Client::new(["not a url\n"]).is_err());
    }

    /// Ready on its first poll, or not at all.
    async fn at_once<F: std::future::Future>(f: F) -> Option<F::Output> {
        // `timeout` polls the future before it looks at the deadline.
        tokio::time::timeout(Duration::ZERO, f).await.ok()
    }

    #[tokio::test]
    async fn calls_take_turns_and_an_overdue_call_lets_the_next_go() {
        // Long enough that no stall of a busy machine between two lines makes a
        // fresh holder overdue.
        let overdue = Duration::from_secs(1);
        let turns = CallTurns::new(3, overdue);
        let t0 = std::time::Instant::now();
        let first = at_once(turns.next(true))
            .await
            .expect("the first call goes at once");
        assert!(first.1.is_some(), "with the turn");

        // While the first is out, the next waits for the turn until the first is
        // overdue, then goes without it.
        assert!(at_once(turns.next(true)).await.is_none());
        let second = tokio::time::timeout(Duration::from_secs(10), turns.next(true))
            .await
            .expect("an overdue call lets the next go");
        assert!(second.1.is_none() && t0.elapsed() >= overdue);

        // The first is still out and overdue: the next goes at once, without the
        // turn (the second, which never had it, did not free it either).
        drop(second);
        let third = at_once(turns.next(true))
            .await
            .expect("the holder is overdue");
        assert!(third.1.is_none());
        let fourth = at_once(turns.next(true)).await.expect("a slot is free");
        assert!(fourth.1.is_none());

        // All three slots are taken: a fifth waits for a call to end, however long.
        let fifth = tokio::time::timeout(Duration::from_millis(200), turns.next(true)).await;
        assert!(fifth.is_err(), "no more calls than slots");
        drop(fourth);

        // The first answers: its turn goes to the next call at once, and a new holder
        // is not overdue: the call after it waits again.
        drop(first);
        let next = at_once(turns.next(true))
            .await
            .expect("a freed turn is taken at once");
        assert!(next.1.is_some());
        assert!(at_once(turns.next(true)).await.is_none());
        // ...unless its batch is full: waiting could not make it larger.
        let full = at_once(turns.next(false))
            .await
            .expect("a full batch goes at once");
        assert!(full.1.is_none());
        drop((third, next, full));

        // With nothing out, calls go one after another, each at once with the turn.
        for _ in 0..3 {
            let c = at_once(turns.next(true)).await.expect("nothing is out");
            assert!(c.1.is_some());
        }
    }

    /// A server that answers every call with `code` and counts the calls.
    #[derive(Clone)]
    struct Failing {
        code: tonic::Code,
        calls: Arc<AtomicUsize>,
    }

    impl tonic::server::NamedService for Failing {
        const NAME: &'static str = "seatd.v1.Seats";
    }

    impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Failing {
        type Response = tonic::codegen::http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let status = tonic::Status::new(self.code, "the fake server failed");
            std::future::ready(Ok(status.into_http()))
        }
    }

    /// Starts a [`Failing`] server on a loopback port: its address and its call count.
    async fn failing_server(code: tonic::Code) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let calls = Arc::new(AtomicUsize::new(0));
        let service = Failing {
            code,
            calls: calls.clone(),
        };
        let incoming = tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        (addr, calls)
    }

    fn quick_retries() -> Options {
        Options {
            attempt_timeout: Duration::from_millis(500),
            retry_budget: Duration::from_millis(800),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            ..Options::default()
        }
    }

    #[tokio::test]
    async fn internal_and_unknown_are_not_retried() {
        for code in [tonic::Code::Internal, tonic::Code::Unknown] {
            let (addr, calls) = failing_server(code).await;
            let client = Client::with_options([addr.as_str()], quick_retries()).unwrap();
            let e = client.event("x").await.unwrap_err();
            assert_eq!(e.code(), "internal", "{e:?}");
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{code:?} was retried");
            // Batched holds too.
            let e = client
                .hold("x", "u", &["A-1"], None, Some("r1"))
                .await
                .unwrap_err();
            assert_eq!(e.code(), "internal", "{e:?}");
            assert_eq!(calls.load(Ordering::SeqCst), 2, "{code:?} hold was retried");
        }
    }

    #[tokio::test]
    async fn unavailable_is_retried_until_the_budget_is_spent() {
        let (addr, calls) = failing_server(tonic::Code::Unavailable).await;
        let client = Client::with_options([addr.as_str()], quick_retries()).unwrap();
        let e = client.event("x").await.unwrap_err();
        assert_eq!(e.code(), "unavailable", "{e:?}");
        assert!(
            calls.load(Ordering::SeqCst) > 1,
            "UNAVAILABLE was not retried"
        );
    }

    #[tokio::test]
    async fn generated_keys_are_unique_per_client() {
        let a = Client::new(["127.0.0.1:9"]).unwrap();
        let b = Client::new(["127.0.0.1:9"]).unwrap();
        let ka = a.ids.next("r");
        assert_ne!(ka, a.ids.next("r"));
        assert_ne!(ka, b.ids.next("r"));
    }
}
