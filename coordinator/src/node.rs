//! `seatd node`: one replica process hosting a Raft group per shard it is placed on,
//! serving the client API, the Raft transport, gRPC health and reflection on one
//! address.
//!
//! Life cycle:
//! 1. Open the data directory (one RocksDB for every shard) and check it belongs to
//!    this node id and shard count (`node.json`), so a misconfigured restart fails
//!    loudly instead of joining the wrong groups.
//! 2. Start a Raft group per hosted shard and serve.
//! 3. Bootstrap: for each shard, the member with the lowest id waits until every
//!    node answers, and initialises the group only if none of them has any Raft state
//!    for it. A restarted node, or a node with an empty data dir joining a running
//!    cluster, therefore never initialises anything: the leader catches it up (from the
//!    log, or by snapshot when the log was purged).
//! 4. Shutdown (SIGTERM, Ctrl-C, or [`NodeHandle::shutdown`]): report NOT_SERVING,
//!    stop accepting calls, let the calls in flight finish (bounded), stop every Raft
//!    group, close the store.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Raft};
use raft_store::raft::{raft_config, LogPolicy, NodeId, RaftTiming};
use raft_store::storage::Store;
use seatd_proto::v1::seats_server::SeatsServer;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::clock::{Clock, Stamper};
use crate::error::Error;
use crate::ids::IdGen;
use crate::payment::PaymentGateway;
use crate::placement::Cluster;
use crate::raft_net::{Peers, RaftService, ShardNetwork, VoteGate};
use crate::route::Rotor;
use crate::service::SeatsService;
use crate::shard::Shard;

/// Everything a node needs to run.
pub struct NodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub cluster: Cluster,
    pub log_policy: LogPolicy,
    pub timing: RaftTiming,
    pub settings: Settings,
    pub clock: Arc<dyn Clock>,
    pub gateway: Arc<dyn PaymentGateway>,
}

/// Bounds on how long the node waits for others.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long a call waits for a shard leader before UNAVAILABLE.
    pub route_wait: Duration,
    /// How long a charge may take before its outcome counts as unknown.
    pub payment_timeout: Duration,
    /// How long a shutdown waits for calls in flight.
    pub drain_timeout: Duration,
    /// Holds one user may ask for per second where calls enter (0: no limit).
    pub holds_per_user_per_s: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            route_wait: Duration::from_secs(5),
            payment_timeout: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(10),
            holds_per_user_per_s: 20,
        }
    }
}

/// Largest client request accepted (a layout naming every seat of a big venue).
pub const REQUEST_BYTES_MAX: usize = 16 << 20;
const IDENTITY_FILE: &str = "node.json";

/// What a data directory belongs to.
#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
struct Identity {
    node_id: NodeId,
    shards: u32,
}

/// State shared by the client service, the router and the bootstrapper.
pub struct NodeInner {
    pub id: NodeId,
    pub cluster: Cluster,
    pub shards: HashMap<u32, Arc<Shard>>,
    pub settings: Settings,
    pub gateway: Arc<dyn PaymentGateway>,
    pub(crate) forward_channels: Peers,
    /// `None` on a frontend, which stores nothing.
    pub(crate) store: Option<Store>,
    pub(crate) rotor: Rotor,
    /// The leader last seen for each shard this process does not host.
    pub(crate) hints: std::sync::Mutex<HashMap<u32, NodeId>>,
    pub(crate) hold_limiter: crate::admission::HoldLimiter,
    ids: IdGen,
}

impl NodeInner {
    /// The state of a process that hosts no shard and forwards every call: a
    /// frontend. Its id 0 is no node's.
    pub fn stateless(cluster: Cluster, settings: Settings, clock: &dyn Clock) -> Self {
        Self {
            id: 0,
            cluster,
            shards: HashMap::new(),
            settings,
            gateway: Arc::new(crate::payment::TestGateway::default()),
            forward_channels: Peers::default(),
            store: None,
            rotor: Rotor::default(),
            hints: Default::default(),
            hold_limiter: crate::admission::HoldLimiter::new(settings.holds_per_user_per_s),
            ids: IdGen::new(0, clock.now_ms()),
        }
    }

    /// A fresh id for a retry key or an event the caller did not name.
    pub fn fresh_id(&self, prefix: &str) -> String {
        self.ids.next(prefix)
    }
}

/// A running node.
pub struct NodeHandle {
    pub inner: Arc<NodeInner>,
    pub addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    server: ServerTask,
    store: Store,
    health: tonic_health::server::HealthReporter,
    drain_timeout: Duration,
}

fn check_identity(dir: &std::path::Path, want: &Identity) -> Result<(), Error> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: Identity = serde_json::from_str(&text).map_err(|e| {
                Error::Config(format!("{}: not a node identity: {e}", path.display()))
            })?;
            if &found != want {
                return Err(Error::Config(format!(
                    "{} belongs to node {} of a cluster with {} shards; this is node {} \
                     with --shards {}",
                    dir.display(),
                    found.node_id,
                    found.shards,
                    want.node_id,
                    want.shards
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_string(want).expect("plain struct");
            std::fs::write(&path, text)
                .map_err(|e| Error::Config(format!("{}: cannot write: {e}", path.display())))
        }
        Err(e) => Err(Error::Config(format!("{}: {e}", path.display()))),
    }
}

impl NodeHandle {
    /// Opens the data dir, starts every hosted shard and serves on `listener`.
    pub async fn start(config: NodeConfig, listener: TcpListener) -> Result<Self, Error> {
        let NodeConfig {
            id,
            data_dir,
            cluster,
            log_policy,
            timing,
            settings,
            clock,
            gateway,
        } = config;
        if cluster.addr(id).is_none() {
            return Err(Error::Config(format!("--peers does not name node {id}")));
        }
        let addr = listener.local_addr()?;
        let store = Store::open(&data_dir)?;
        check_identity(
            &data_dir,
            &Identity {
                node_id: id,
                shards: cluster.shards(),
            },
        )?;
        let raft_config = raft_config("seatd", log_policy, timing)?;
        let raft_peers = Peers::with_address_book(
            cluster
                .nodes()
                .iter()
                .map(|(id, addr)| (*id, addr.clone()))
                .collect(),
        );
        let (stop, stopped) = watch::channel(false);
        let mut shards = HashMap::new();
        let mut gates = HashMap::new();
        // The shards placed here, and any group this node already belongs to: a shard
        // moving away (see `membership`) keeps its data served until it has moved.
        let mut hosted: Vec<u32> = cluster.shards_of(id);
        let stored = store.groups()?;
        for &g in &stored {
            if g >= cluster.shards() {
                return Err(Error::Config(format!(
                    "{} holds shard {g}, but the cluster has {} shards",
                    data_dir.display(),
                    cluster.shards()
                )));
            }
            if !hosted.contains(&g) {
                hosted.push(g);
            }
        }
        for shard in hosted {
            let (log, sm) = store.group(shard)?;
            let reader = sm.reader();
            let net = ShardNetwork {
                shard,
                from: id,
                peers: raft_peers.clone(),
            };
            let raft = Raft::new(id, raft_config.clone(), net, log, sm)
                .await
                .map_err(|e| Error::Unavailable(format!("shard {shard}: raft: {e}")))?;
            let stamper = Stamper::new(clock.clone(), reader.clone());
            let gate = if stored.contains(&shard) {
                VoteGate::default()
            } else {
                VoteGate::started_empty()
            };
            gates.insert(shard, gate);
            shards.insert(
                shard,
                Shard::start(shard, id, raft, reader, stamper, stopped.clone()),
            );
        }
        info!(
            node = id,
            %addr,
            shards = shards.len(),
            data_dir = %data_dir.display(),
            "node starting"
        );
        let inner = Arc::new(NodeInner {
            id,
            cluster,
            shards,
            settings,
            gateway,
            forward_channels: Peers::default(),
            store: Some(store.clone()),
            rotor: Rotor::default(),
            hints: Default::default(),
            hold_limiter: crate::admission::HoldLimiter::new(settings.holds_per_user_per_s),
            ids: IdGen::new(id, clock.now_ms()),
        });

        let raft_service = RaftService::new(
            inner
                .shards
                .iter()
                .map(|(s, sh)| (*s, (sh.raft.clone(), gates[s].clone())))
                .collect(),
            stopped.clone(),
        );
        let (health, server) = serve(
            SeatsService::new(inner.clone()),
            Some(raft_service),
            listener,
            stopped.clone(),
        )
        .await?;
        for shard in inner.shards.keys().copied() {
            if inner.cluster.members(shard).first() == Some(&id) {
                tokio::spawn(bootstrap(inner.clone(), shard, stopped.clone()));
            }
            tokio::spawn(crate::membership::reconcile(
                inner.clone(),
                shard,
                stopped.clone(),
            ));
            if !inner.cluster.members(shard).contains(&id) {
                tokio::spawn(crate::membership::retire_when_moved(
                    inner.clone(),
                    shard,
                    stopped.clone(),
                ));
            }
        }
        Ok(Self {
            inner,
            addr,
            stop,
            server,
            store,
            health,
            drain_timeout: settings.drain_timeout,
        })
    }

    /// Stops serving (letting calls in flight finish, bounded), stops every Raft group
    /// and closes the store.
    pub async fn shutdown(self) -> Result<(), Error> {
        info!(node = self.inner.id, "shutting down");
        stop_serving(&self.health, &self.stop, self.server, self.drain_timeout).await;
        for (shard, s) in self.inner.shards.iter().filter(|(_, s)| !s.is_retired()) {
            if let Err(e) = s.raft.shutdown().await {
                warn!(shard, error = %e, "raft shutdown failed");
            }
        }
        drop(self.store);
        info!(node = self.inner.id, "stopped");
        Ok(())
    }

    /// The members every shard hosted here is placed on, for tests and status.
    pub fn members(&self) -> BTreeMap<u32, Vec<NodeId>> {
        self.inner
            .shards
            .keys()
            .map(|&s| (s, self.inner.cluster.members(s)))
            .collect()
    }
}

pub(crate) type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// Serves the client API (and on a node the Raft transport), gRPC health and server
/// reflection on `listener` until `stopped` turns true. Nodes and frontends differ
/// only in what they pass here.
pub(crate) async fn serve(
    seats: SeatsService,
    raft: Option<RaftService>,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
) -> Result<(tonic_health::server::HealthReporter, ServerTask), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SeatsServer<SeatsService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(seatd_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let node = seats.node().clone();
    let seats = SeatsServer::new(seats)
        .max_decoding_message_size(REQUEST_BYTES_MAX)
        .max_encoding_message_size(crate::route::REPLY_BYTES_MAX);
    let seats = crate::holds::PassThrough::new(seats, node);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(seats)
            .add_optional_service(raft.map(RaftService::into_server))
            .add_service(health_service)
            .add_service(reflection)
            .serve_with_incoming_shutdown(incoming(listener), async move {
                let _ = stopped.wait_for(|s| *s).await;
            }),
    );
    Ok((health, server))
}

/// Accepted connections with Nagle's algorithm off. The server's own `tcp_nodelay`
/// only applies to listeners it binds itself; without this, small replies waited
/// for the peer's delayed ACK (about 40 ms) whenever a connection was not busy.
pub(crate) fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Reports NOT_SERVING, stops accepting calls and waits (at most `drain_timeout`)
/// for the calls in flight to finish.
pub(crate) async fn stop_serving(
    health: &tonic_health::server::HealthReporter,
    stop: &watch::Sender<bool>,
    mut server: ServerTask,
    drain_timeout: Duration,
) {
    health.set_not_serving::<SeatsServer<SeatsService>>().await;
    let _ = stop.send(true);
    match tokio::time::timeout(drain_timeout, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "server task failed"),
        Err(_) => {
            warn!("calls still in flight after the drain timeout; cutting them off");
            server.abort();
        }
    }
}

/// How often the bootstrapper asks the members again.
const BOOTSTRAP_RETRY_MS: u64 = 200;

/// Initialises `shard` once every member is up and none has state for it.
async fn bootstrap(node: Arc<NodeInner>, shard: u32, mut stop: watch::Receiver<bool>) {
    let Some(local) = node.shards.get(&shard).cloned() else {
        return;
    };
    let members = node.cluster.members(shard);
    // Every node, not only the members: a shard that moved keeps its data on nodes
    // the placement no longer names, and must never be initialised a second time.
    let everyone: Vec<NodeId> = node.cluster.nodes().keys().copied().collect();
    let mut waiting_logged = false;
    loop {
        if local.raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        match crate::service::peer_views(&node, &everyone, Duration::from_millis(500)).await {
            Ok(views) => {
                let known = views
                    .iter()
                    .filter_map(|(peer, v)| v.as_ref().map(|v| (peer, v)))
                    .filter_map(|(peer, v)| {
                        v.shards
                            .iter()
                            .find(|s| s.shard == shard)
                            .map(|s| (peer, s.initialized))
                    })
                    .collect::<Vec<_>>();
                if known.iter().any(|(_, init)| *init) {
                    info!(
                        shard,
                        "the shard already exists on a peer; waiting to be caught up"
                    );
                    return;
                }
                let unreachable: Vec<NodeId> = views
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(p, _)| *p)
                    .collect();
                if unreachable.is_empty() {
                    let nodes: BTreeMap<NodeId, BasicNode> = members
                        .iter()
                        .map(|m| (*m, BasicNode::new(node.cluster.addr(*m).unwrap_or(""))))
                        .collect();
                    match local.raft.initialize(nodes).await {
                        Ok(()) => info!(shard, ?members, "initialised the shard's group"),
                        Err(e) => warn!(shard, error = %e, "initialise refused"),
                    }
                    return;
                }
                if !waiting_logged {
                    info!(
                        shard,
                        ?unreachable,
                        "waiting for every member before initialising"
                    );
                    waiting_logged = true;
                }
            }
            Err(e) => warn!(shard, error = %e, "bootstrap check failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(BOOTSTRAP_RETRY_MS)) => {}
            _ = stop.changed() => return,
        }
    }
}
