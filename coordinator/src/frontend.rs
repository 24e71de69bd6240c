//! `seatd frontend`: a stateless gateway in front of the nodes.
//!
//! It learns the cluster's shape (nodes, shard count) from any node, keeps a map of
//! shard → leader fresh (every [`LEADER_REFRESH_MS`], and at once after a forward
//! fails), and forwards each call straight to the leader of its event's shard over
//! one long-lived HTTP/2 connection per node. It serves the same API as a node, with
//! the same router (a process that hosts no shard), so calls are retried and bounded
//! exactly as on a node.
//!
//! Caches, and only where the caller accepted a possibly old answer: the event list
//! (default 30 s; any event created or changed through this frontend empties it) and
//! seat maps asked for with `stale_ok` (default 1 s). A cached answer says how old it
//! is (`cache_age_ms`). Consistent reads and every write always go to the leader.
//!
//! Nothing here is durable: kill a frontend and start another, and nothing is lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seatd_proto::v1 as pb;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::api::{Api, SeatsApi};
use crate::clock::SystemClock;
use crate::error::{Error, StartError};
use crate::lifecycle::{Background, CancellationToken, DropGuard, Ticks};
use crate::placement::Cluster;
use crate::process::{Process, Settings};
use crate::service::SeatsService;
use seatd_wire::routing::paths;

/// How often the frontend refreshes its shard → leader map.
pub const LEADER_REFRESH_MS: u64 = 1_000;
/// How long the frontend waits for every node's client address at start.
const ADDRS_WAIT_MS: u64 = 5_000;
/// How long the frontend waits for a node to describe the cluster at start.
pub const DISCOVERY_MS_MAX: u64 = 60_000;
use crate::limits::FRONTEND_CACHE_ENTRIES_MAX as CACHE_ENTRIES_MAX;

pub struct FrontendConfig {
    /// Addresses of some (or all) nodes; the rest are learned from them. An entry
    /// `ID=ADDR` also says how this frontend reaches node ID, whatever address the
    /// nodes know it by (a frontend on another network than the nodes' own links).
    pub nodes: Vec<String>,
    pub seat_map_cache: Duration,
    pub event_list_cache: Duration,
    pub settings: Settings,
    /// Checks bearer tokens on every call when set.
    pub auth: Option<Arc<crate::auth::Verifier>>,
    /// Serves the client port over TLS when set (`--tls-cert`, `--tls-key`).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Reaches the nodes' client ports over TLS, trusting this CA, when set
    /// (`--nodes-ca`).
    pub nodes_tls: Option<tonic::transport::ClientTlsConfig>,
}

/// Answers a frontend may give again for a while.
pub struct FrontCache {
    seat_map_ttl: Duration,
    event_list_ttl: Duration,
    maps: Mutex<HashMap<String, (Instant, pb::SeatMap)>>,
    lists: Mutex<HashMap<String, (Instant, pb::ListEventsResponse)>>,
}

fn fresh<T: Clone>(
    map: &Mutex<HashMap<String, (Instant, T)>>,
    key: &str,
    ttl: Duration,
) -> Option<(T, u64)> {
    let map = map.lock().ok()?;
    let (at, value) = map.get(key)?;
    let age = at.elapsed();
    (age < ttl).then(|| (value.clone(), age.as_millis() as u64))
}

fn remember<T>(map: &Mutex<HashMap<String, (Instant, T)>>, key: String, value: T) {
    if let Ok(mut map) = map.lock() {
        if map.len() >= CACHE_ENTRIES_MAX {
            map.clear();
        }
        map.insert(key, (Instant::now(), value));
    }
}

impl FrontCache {
    pub fn new(seat_map_ttl: Duration, event_list_ttl: Duration) -> Self {
        Self {
            seat_map_ttl,
            event_list_ttl,
            maps: Mutex::default(),
            lists: Mutex::default(),
        }
    }

    pub fn seat_map(&self, event: &str) -> Option<pb::SeatMap> {
        let (mut map, age) = fresh(&self.maps, event, self.seat_map_ttl)?;
        map.cache_age_ms = age;
        Some(map)
    }

    pub fn keep_seat_map(&self, map: &pb::SeatMap) {
        if !self.seat_map_ttl.is_zero() {
            remember(&self.maps, map.event_id.clone(), map.clone());
        }
    }

    fn list_key(req: &pb::ListEventsRequest) -> String {
        format!(
            "{:?}/{:?}/{}/{}/{:?}",
            req.from_ms, req.to_ms, req.q, req.limit, req.shard
        )
    }

    pub fn event_list(&self, req: &pb::ListEventsRequest) -> Option<pb::ListEventsResponse> {
        let key = Self::list_key(req);
        let (mut list, age) = fresh(&self.lists, &key, self.event_list_ttl)?;
        list.cache_age_ms = age;
        Some(list)
    }

    pub fn keep_event_list(&self, req: &pb::ListEventsRequest, list: &pb::ListEventsResponse) {
        if !self.event_list_ttl.is_zero() {
            remember(&self.lists, Self::list_key(req), list.clone());
        }
    }

    /// An event was created or changed through this frontend: lists may miss it.
    pub fn events_changed(&self) {
        if let Ok(mut lists) = self.lists.lock() {
            lists.clear();
        }
    }
}

/// The client API with a frontend's cache in front: event lists and whole seat maps
/// asked for with `stale_ok` are answered from the cache while fresh; an event created
/// or changed through this frontend empties the lists. Everything else goes to the
/// wrapped API unchanged.
pub struct Cached<A> {
    inner: A,
    cache: FrontCache,
}

impl<A: SeatsApi> Cached<A> {
    pub fn new(inner: A, cache: FrontCache) -> Self {
        Self { inner, cache }
    }
}

/// Whether a seat map request asks for the whole map (no section, no page): only
/// those are cached.
fn whole_map(req: &pb::GetSeatMapRequest) -> bool {
    req.section.is_none() && req.page_size == 0 && req.page_token.is_empty()
}

impl<A: SeatsApi> SeatsApi for Cached<A> {
    fn node(&self) -> &Arc<Process> {
        self.inner.node()
    }

    /// Event changes are seen decoded, so the lists they change are forgotten.
    fn decodes(&self, path: &str) -> bool {
        matches!(path, paths::CREATE_EVENT | paths::SET_SALE) || self.inner.decodes(path)
    }

    crate::delegate_seats_api! { |this| this.inner;
        get_event(pb::GetEventRequest) -> pb::Event;
        hold(pb::HoldRequest) -> pb::Hold;
        hold_many(pb::HoldManyRequest) -> pb::HoldManyResponse;
        commit(pb::CommitRequest) -> pb::Order;
        release(pb::ReleaseRequest) -> pb::Hold;
        get_hold(pb::GetHoldRequest) -> pb::Hold;
        get_order(pb::GetOrderRequest) -> pb::Order;
        list_holds(pb::ListHoldsRequest) -> pb::ListHoldsResponse;
    }

    async fn create_event(
        &self,
        req: pb::CreateEventRequest,
        call: crate::forward::Call,
    ) -> Result<pb::Event, Error> {
        // Before and after: a list cached meanwhile may miss the event.
        self.cache.events_changed();
        let created = self.inner.create_event(req, call).await;
        self.cache.events_changed();
        created
    }

    async fn set_sale(
        &self,
        req: pb::SetSaleRequest,
        call: crate::forward::Call,
    ) -> Result<pb::Event, Error> {
        let set = self.inner.set_sale(req, call).await;
        self.cache.events_changed();
        set
    }

    async fn list_events(
        &self,
        req: pb::ListEventsRequest,
        call: crate::forward::Call,
    ) -> Result<pb::ListEventsResponse, Error> {
        // The cache key holds the query: an oversized one goes straight to the API,
        // which refuses it, and is never copied into a key.
        if req.q.len() > raft_store::limits::TEXT_BYTES_MAX {
            return self.inner.list_events(req, call).await;
        }
        if let Some(hit) = self.cache.event_list(&req) {
            return Ok(hit);
        }
        let list = self.inner.list_events(req.clone(), call).await?;
        self.cache.keep_event_list(&req, &list);
        Ok(list)
    }

    async fn get_seat_map(
        &self,
        req: pb::GetSeatMapRequest,
        call: crate::forward::Call,
    ) -> Result<pb::SeatMap, Error> {
        let cached = req.stale_ok && whole_map(&req);
        if cached {
            if let Some(hit) = self.cache.seat_map(&req.event_id) {
                return Ok(hit);
            }
        }
        let map = self.inner.get_seat_map(req, call).await?;
        if cached {
            self.cache.keep_seat_map(&map);
        }
        Ok(map)
    }

    async fn cluster_status(
        &self,
        req: pb::ClusterStatusRequest,
    ) -> Result<pb::ClusterStatus, Error> {
        self.inner.cluster_status(req).await
    }
}

/// Asks `nodes` (in turn, until one answers) for the cluster-wide status.
async fn ask_status(
    nodes: &[String],
    tls: Option<&tonic::transport::ClientTlsConfig>,
    timeout: Duration,
) -> Result<pb::ClusterStatus, StartError> {
    let mut last = String::from("no node given");
    for addr in nodes {
        let url = seatd_wire::net::endpoint_url(addr)
            .ok_or_else(|| StartError::Config("an empty node address".into()))?;
        let url = match tls {
            Some(_) => url.replacen("http://", "https://", 1),
            None => url,
        };
        let bad =
            |e: tonic::transport::Error| StartError::Config(format!("node address {addr:?}: {e}"));
        let mut endpoint = tonic::transport::Endpoint::from_shared(url).map_err(bad)?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
        }
        let endpoint = endpoint.connect_timeout(timeout);
        let answer = async {
            let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
            pb::seats_client::SeatsClient::new(channel)
                .cluster_status(pb::ClusterStatusRequest {
                    local: false,
                    digest: false,
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string())
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(status)) => return Ok(status),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer"),
        }
    }
    Err(StartError::Unavailable(last))
}

/// The cluster's shape, as a node describes it, with the addresses given as
/// `ID=ADDR` taking precedence.
async fn discover(
    given: &[String],
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Cluster, StartError> {
    let mut pinned = BTreeMap::new();
    let mut nodes = Vec::new();
    for g in given {
        match g.split_once('=') {
            Some((id, addr)) => {
                let id: u64 = id
                    .trim()
                    .parse()
                    .map_err(|_| StartError::Config(format!("--nodes entry {g:?}: bad node id")))?;
                pinned.insert(id, addr.trim().to_string());
                nodes.push(addr.trim().to_string());
            }
            None => nodes.push(g.clone()),
        }
    }
    let started = Instant::now();
    loop {
        match ask_status(&nodes, tls, Duration::from_secs(1)).await {
            Ok(status) => {
                let mut members: BTreeMap<u64, String> = status
                    .nodes
                    .iter()
                    .map(|n| (n.id, n.addr.clone()))
                    .collect();
                members.extend(pinned.clone());
                // Nodes learn each other's client addresses over their peer ports
                // shortly after they start; a node not heard of yet is given a while.
                let unknown: Vec<u64> = members
                    .iter()
                    .filter(|(_, a)| a.is_empty())
                    .map(|(id, _)| *id)
                    .collect();
                if unknown.is_empty() || started.elapsed() >= Duration::from_millis(ADDRS_WAIT_MS) {
                    if !unknown.is_empty() {
                        warn!(?unknown, "starting without these nodes' client addresses");
                    }
                    return Cluster::new(members, status.shards.len() as u32);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) if started.elapsed() < Duration::from_millis(DISCOVERY_MS_MAX) => {
                info!(error = %e, "waiting for a node to describe the cluster");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A running frontend.
pub struct FrontendHandle {
    pub addr: std::net::SocketAddr,
    pub inner: Arc<Process>,
    background: Background,
    /// Dropping the handle without `shutdown` stops the process's work too.
    _stop_on_drop: DropGuard,
    server: crate::server::ServerTask,
    health: tonic_health::server::HealthReporter,
    drain_timeout: Duration,
}

impl FrontendHandle {
    pub async fn start(config: FrontendConfig, listener: TcpListener) -> Result<Self, StartError> {
        let addr = listener.local_addr()?;
        let cluster = discover(&config.nodes, config.nodes_tls.as_ref()).await?;
        info!(%addr, nodes = cluster.nodes().len(), shards = cluster.shards(), "frontend starting");
        let inner = Arc::new(Process::frontend_over(
            cluster,
            config.settings,
            &SystemClock::default(),
            config.nodes_tls,
        ));
        let cache = FrontCache::new(config.seat_map_cache, config.event_list_cache);
        let background = Background::default();
        background.spawn(refresh_leaders(inner.clone(), background.stop.clone()));
        let (health, server) = crate::server::serve(
            SeatsService::new(Cached::new(Api::new(inner.clone()), cache), config.auth)
                .limit_anonymous_by_address(),
            listener,
            config.tls,
            background.stop.clone(),
        )
        .await?;
        Ok(Self {
            addr,
            inner,
            _stop_on_drop: background.stop.clone().drop_guard(),
            background,
            server,
            health,
            drain_timeout: config.settings.drain_timeout,
        })
    }

    /// Stops accepting calls and lets the calls in flight finish (bounded).
    pub async fn shutdown(self) -> Result<(), StartError> {
        crate::server::stop_serving(
            &self.health,
            &self.background.stop,
            self.server,
            self.drain_timeout,
        )
        .await;
        if !self.background.stop_and_wait(self.drain_timeout).await {
            warn!("background tasks still running after the drain timeout");
        }
        info!("frontend stopped");
        Ok(())
    }
}

/// Keeps the shard → leader map fresh.
async fn refresh_leaders(inner: Arc<Process>, stop: CancellationToken) {
    let nodes: Vec<u64> = inner.cluster.nodes().keys().copied().collect();
    let mut ticks = Ticks::every(Duration::from_millis(LEADER_REFRESH_MS), stop);
    while ticks.next().await {
        // Each node's own view, over the long-lived channels calls use too.
        if let Ok(views) =
            crate::cluster_view::peer_views(&inner, &nodes, Duration::from_millis(900)).await
        {
            inner.learn_leaders(&crate::cluster_view::merge_views(&inner, views));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// An API that counts the calls that reach it and answers from fixed values.
    struct Counting {
        node: Arc<Process>,
        lists: AtomicU32,
        maps: AtomicU32,
    }

    fn unexpected<T>() -> Result<T, Error> {
        Err(Error::Internal("not used by this test".into()))
    }

    impl SeatsApi for Counting {
        fn node(&self) -> &Arc<Process> {
            &self.node
        }
        async fn list_events(
            &self,
            _: pb::ListEventsRequest,
            _: crate::forward::Call,
        ) -> Result<pb::ListEventsResponse, Error> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            Ok(pb::ListEventsResponse::default())
        }
        async fn get_seat_map(
            &self,
            r: pb::GetSeatMapRequest,
            _: crate::forward::Call,
        ) -> Result<pb::SeatMap, Error> {
            self.maps.fetch_add(1, Ordering::SeqCst);
            Ok(pb::SeatMap {
                event_id: r.event_id,
                ..Default::default()
            })
        }
        async fn create_event(
            &self,
            _: pb::CreateEventRequest,
            _: crate::forward::Call,
        ) -> Result<pb::Event, Error> {
            Ok(pb::Event::default())
        }
        async fn set_sale(
            &self,
            _: pb::SetSaleRequest,
            _: crate::forward::Call,
        ) -> Result<pb::Event, Error> {
            Ok(pb::Event::default())
        }
        async fn get_event(
            &self,
            _: pb::GetEventRequest,
            _: crate::forward::Call,
        ) -> Result<pb::Event, Error> {
            unexpected()
        }
        async fn hold(
            &self,
            _: pb::HoldRequest,
            _: crate::forward::Call,
        ) -> Result<pb::Hold, Error> {
            unexpected()
        }
        async fn hold_many(
            &self,
            _: pb::HoldManyRequest,
            _: crate::forward::Call,
        ) -> Result<pb::HoldManyResponse, Error> {
            unexpected()
        }
        async fn commit(
            &self,
            _: pb::CommitRequest,
            _: crate::forward::Call,
        ) -> Result<pb::Order, Error> {
            unexpected()
        }
        async fn release(
            &self,
            _: pb::ReleaseRequest,
            _: crate::forward::Call,
        ) -> Result<pb::Hold, Error> {
            unexpected()
        }
        async fn get_hold(
            &self,
            _: pb::GetHoldRequest,
            _: crate::forward::Call,
        ) -> Result<pb::Hold, Error> {
            unexpected()
        }
        async fn get_order(
            &self,
            _: pb::GetOrderRequest,
            _: crate::forward::Call,
        ) -> Result<pb::Order, Error> {
            unexpected()
        }
        async fn list_holds(
            &self,
            _: pb::ListHoldsRequest,
            _: crate::forward::Call,
        ) -> Result<pb::ListHoldsResponse, Error> {
            unexpected()
        }
        async fn cluster_status(
            &self,
            _: pb::ClusterStatusRequest,
        ) -> Result<pb::ClusterStatus, Error> {
            unexpected()
        }
    }

    fn cached() -> Cached<Counting> {
        let nodes = BTreeMap::from([(1, "127.0.0.1:1".to_string())]);
        let cluster = Cluster::new(nodes, 1).expect("a cluster");
        let node = Arc::new(Process::frontend(
            cluster,
            Settings::default(),
            &SystemClock::default(),
        ));
        let inner = Counting {
            node,
            lists: AtomicU32::new(0),
            maps: AtomicU32::new(0),
        };
        Cached::new(
            inner,
            FrontCache::new(Duration::from_secs(60), Duration::from_secs(60)),
        )
    }

    #[tokio::test]
    async fn lists_are_cached_until_an_event_changes_through_this_frontend() {
        let api = cached();
        let req = pb::ListEventsRequest::default();
        api.list_events(req.clone(), Default::default())
            .await
            .unwrap();
        let again = api
            .list_events(req.clone(), Default::default())
            .await
            .unwrap();
        assert_eq!(
            api.inner.lists.load(Ordering::SeqCst),
            1,
            "the second is cached"
        );
        assert!(again.cache_age_ms < 60_000);
        // Another query is another entry.
        let other = pb::ListEventsRequest {
            q: "jazz".into(),
            ..Default::default()
        };
        api.list_events(other, Default::default()).await.unwrap();
        assert_eq!(api.inner.lists.load(Ordering::SeqCst), 2);
        for change in 0..2 {
            match change {
                0 => drop(
                    api.create_event(Default::default(), Default::default())
                        .await,
                ),
                _ => drop(api.set_sale(Default::default(), Default::default()).await),
            }
            api.list_events(req.clone(), Default::default())
                .await
                .unwrap();
            assert_eq!(api.inner.lists.load(Ordering::SeqCst), 3 + change);
        }
    }

    #[tokio::test]
    async fn an_oversized_query_is_never_made_a_cache_key() {
        let api = cached();
        let huge = pb::ListEventsRequest {
            q: "x".repeat(raft_store::limits::TEXT_BYTES_MAX + 1),
            ..Default::default()
        };
        api.list_events(huge.clone(), Default::default())
            .await
            .unwrap();
        api.list_events(huge, Default::default()).await.unwrap();
        assert_eq!(
            api.inner.lists.load(Ordering::SeqCst),
            2,
            "both reach the API"
        );
    }

    #[tokio::test]
    async fn only_whole_stale_ok_seat_maps_are_cached() {
        let api = cached();
        let stale = pb::GetSeatMapRequest {
            event_id: "ev".into(),
            stale_ok: true,
            ..Default::default()
        };
        api.get_seat_map(stale.clone(), Default::default())
            .await
            .unwrap();
        let hit = api
            .get_seat_map(stale.clone(), Default::default())
            .await
            .unwrap();
        assert_eq!(
            (hit.event_id.as_str(), api.inner.maps.load(Ordering::SeqCst)),
            ("ev", 1)
        );
        let uncached = [
            pb::GetSeatMapRequest {
                stale_ok: false,
                ..stale.clone()
            },
            pb::GetSeatMapRequest {
                section: Some("S1".into()),
                ..stale.clone()
            },
            pb::GetSeatMapRequest {
                page_size: 10,
                ..stale.clone()
            },
        ];
        for (i, req) in uncached.into_iter().enumerate() {
            api.get_seat_map(req, Default::default()).await.unwrap();
            assert_eq!(api.inner.maps.load(Ordering::SeqCst), 2 + i as u32);
        }
    }
}
