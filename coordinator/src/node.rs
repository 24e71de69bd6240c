//! `seatd node`: one replica process hosting a Raft group per shard it is placed on.
//!
//! Two listeners, two trust levels:
//! - the client port serves the client API, gRPC health and reflection, to anyone;
//! - the peer port serves the Raft transport, the cluster's internal calls and calls
//!   forwarded by other nodes, over mutual TLS to the cluster's nodes only
//!   ([`crate::tls`]). Nothing internal is served on the client port.
//!
//! `--peers` names every node's peer address; each node advertises its client address
//! to the others ([`refresh_client_addrs`]), so any node can tell a frontend or
//! `seatctl` where every node serves clients.
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
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::clock::{Clock, Stamper};
use crate::error::StartError;
use crate::lifecycle::{pause, Background, CancellationToken, DropGuard};
use crate::limits::ADDR_BYTES_MAX;
use crate::payment::PaymentGateway;
use crate::peers::{Links, PeerChannels};
use crate::placement::Cluster;
use crate::process::{Hosted, Process, Settings};
use crate::raft_net::{GateBook, RaftService, ShardNetwork, VoteGate};
use crate::server::{drain, incoming, serve, stop_serving, ServerTask};
use crate::service::SeatsService;
use crate::shard::Shard;
use crate::tls::PeerTls;

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
    /// This node's certificate and the cluster CA, for the peer port.
    pub tls: PeerTls,
    /// The client address other nodes tell frontends and `seatctl` about; `None`:
    /// the client listener's own address (with this host's name for 0.0.0.0).
    pub advertise: Option<String>,
    /// Checks bearer tokens on every call (client and peer port) when set.
    pub auth: Option<Arc<crate::auth::Verifier>>,
    /// Serves the client port over TLS when set (`--tls-cert`, `--tls-key`).
    pub client_tls: Option<tonic::transport::ServerTlsConfig>,
}

/// The exit code of a node whose Raft group failed, for its supervisor to restart it.
pub const GROUP_FAILED_EXIT_CODE: i32 = 3;
/// How long a node with a failed group keeps reporting NOT_SERVING before it exits,
/// so probes and peers see why it goes.
const GROUP_FAILED_EXIT_DELAY_MS: u64 = 1_000;

const IDENTITY_FILE: &str = "node.json";

/// What a data directory belongs to.
#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
struct Identity {
    node_id: NodeId,
    shards: u32,
}

/// A running node.
pub struct NodeHandle {
    pub inner: Arc<Process>,
    /// The client port.
    pub addr: std::net::SocketAddr,
    /// The peer port (mutual TLS).
    pub peer_addr: std::net::SocketAddr,
    background: Background,
    /// Dropping the handle without `shutdown` stops the process's work too.
    _stop_on_drop: DropGuard,
    server: ServerTask,
    peer_server: ServerTask,
    store: Store,
    health: tonic_health::server::HealthReporter,
    drain_timeout: Duration,
}

/// The node id and shard count `dir` belongs to (its `node.json`).
pub(crate) fn identity_of(dir: &std::path::Path) -> Result<(NodeId, u32), StartError> {
    let path = dir.join(IDENTITY_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| StartError::Config(format!("{}: {e}", path.display())))?;
    let found: Identity = serde_json::from_str(&text)
        .map_err(|e| StartError::Config(format!("{}: not a node identity: {e}", path.display())))?;
    Ok((found.node_id, found.shards))
}

fn check_identity(dir: &std::path::Path, want: &Identity) -> Result<(), StartError> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: Identity = serde_json::from_str(&text).map_err(|e| {
                StartError::Config(format!("{}: not a node identity: {e}", path.display()))
            })?;
            if &found != want {
                return Err(StartError::Config(format!(
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
                .map_err(|e| StartError::Config(format!("{}: cannot write: {e}", path.display())))
        }
        Err(e) => Err(StartError::Config(format!("{}: {e}", path.display()))),
    }
}

impl NodeHandle {
    /// Opens the data dir, starts every hosted shard, serves clients on `listener`
    /// and the cluster on `peer_listener`.
    pub async fn start(
        config: NodeConfig,
        listener: TcpListener,
        peer_listener: TcpListener,
    ) -> Result<Self, StartError> {
        let NodeConfig {
            id,
            data_dir,
            cluster,
            log_policy,
            timing,
            settings,
            clock,
            gateway,
            tls,
            advertise,
            auth,
            client_tls,
        } = config;
        if cluster.addr(id).is_none() {
            return Err(StartError::Config(format!(
                "--peers does not name node {id}"
            )));
        }
        if tls.node != id {
            return Err(StartError::Config(format!(
                "the certificate given is node {}'s, not node {id}'s",
                tls.node
            )));
        }
        let addr = listener.local_addr()?;
        let peer_addr = peer_listener.local_addr()?;
        let advertise = advertise.unwrap_or_else(|| advertised(addr));
        if advertise.len() > ADDR_BYTES_MAX {
            return Err(StartError::Config(format!(
                "--advertise is longer than {ADDR_BYTES_MAX} bytes"
            )));
        }
        let store = Store::open(&data_dir)?;
        check_identity(
            &data_dir,
            &Identity {
                node_id: id,
                shards: cluster.shards(),
            },
        )?;
        // Groups start unable to elect; each one's rejoin gate switches elections on
        // (`VoteGate::apply_to`) once it may, so no timeout fires before the gate rules.
        let raft_config = std::sync::Arc::new(openraft::Config {
            enable_elect: false,
            ..(*raft_config("seatd", log_policy, timing)?).clone()
        });
        let raft_peers = PeerChannels::new(
            tls.clone(),
            cluster
                .nodes()
                .iter()
                .map(|(id, addr)| (*id, addr.clone()))
                .collect(),
        );
        let background = Background::default();
        let mut shards = HashMap::new();
        let mut gates: HashMap<u32, VoteGate> = HashMap::new();
        let gate_book = GateBook::open(&data_dir)?;
        let (failures, failed) = tokio::sync::mpsc::unbounded_channel();
        // The shards placed here, and any group this node already belongs to: a shard
        // moving away (see `membership`) keeps its data served until it has moved.
        let mut hosted: Vec<u32> = cluster.shards_of(id);
        let stored = store.groups()?;
        for &g in &stored {
            if g >= cluster.shards() {
                return Err(StartError::Config(format!(
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
            if log.uncommit_own_vote(id)? {
                info!(
                    shard,
                    "led before this start: will stand for election again"
                );
            }
            let log_view = log.clone();
            let reader = sm.reader();
            let net = ShardNetwork {
                shard,
                peers: raft_peers.clone(),
            };
            let raft = Raft::new(id, raft_config.clone(), net, log, sm)
                .await
                .map_err(|e| StartError::Unavailable(format!("shard {shard}: raft: {e}")))?;
            let stamper = Stamper::new(clock.clone(), reader.clone());
            // Before the group runs: a replica without state starts closed.
            let gate = gate_book.gate(shard, !stored.contains(&shard))?;
            gate.apply_to(&raft);
            gates.insert(shard, gate);
            shards.insert(
                shard,
                Shard::start(
                    shard,
                    id,
                    crate::shard::Replica {
                        raft,
                        log: log_view,
                        reader,
                    },
                    stamper,
                    &background,
                    failures.clone(),
                ),
            );
        }
        info!(
            node = id,
            %addr,
            %peer_addr,
            %advertise,
            shards = shards.len(),
            data_dir = %data_dir.display(),
            "node starting"
        );
        let inner = Arc::new(Process::node(
            Hosted {
                id,
                cluster,
                shards,
                settings,
                gateway,
                store: store.clone(),
                gates,
                advertise,
            },
            Links::Peers(raft_peers),
            clock.as_ref(),
        ));

        let status_of = inner.clone();
        let raft_service = RaftService::new(
            inner
                .shards
                .iter()
                .map(|(s, sh)| (*s, (sh.raft.clone(), inner.gates[s].clone())))
                .collect(),
            inner.cluster.nodes().keys().copied().collect(),
            Arc::new(move |digest| crate::cluster_view::local_status(&status_of, digest)),
            background.stop.clone(),
        );
        let peer_server = serve_peers(
            SeatsService::for_node(inner.clone(), auth.clone()),
            raft_service,
            &tls,
            peer_listener,
            background.stop.clone(),
        )?;
        let (health, server) = serve(
            SeatsService::for_node(inner.clone(), auth).limit_anonymous_by_address(),
            listener,
            client_tls,
            background.stop.clone(),
        )
        .await?;
        for shard in inner.shards.keys() {
            health
                .set_service_status(
                    shard_health_name(*shard),
                    tonic_health::ServingStatus::Serving,
                )
                .await;
        }
        let stop = &background.stop;
        background.spawn(on_group_failure(
            failed,
            health.clone(),
            settings.exit_on_group_failure,
            stop.clone(),
        ));
        background.spawn(refresh_client_addrs(inner.clone(), stop.clone()));
        for shard in inner.shards.keys().copied() {
            if inner.gates[&shard].is_closed() {
                background.spawn(crate::rejoin::catch_up(
                    inner.clone(),
                    shard,
                    inner.gates[&shard].clone(),
                    stop.clone(),
                ));
            }
            if inner.cluster.members(shard).first() == Some(&id) {
                background.spawn(bootstrap(inner.clone(), shard, stop.clone()));
            }
            background.spawn(crate::membership::reconcile(
                inner.clone(),
                shard,
                stop.clone(),
            ));
            if !inner.cluster.members(shard).contains(&id) {
                background.spawn(crate::membership::retire_when_moved(
                    inner.clone(),
                    shard,
                    stop.clone(),
                ));
            }
        }
        Ok(Self {
            inner,
            addr,
            peer_addr,
            _stop_on_drop: background.stop.clone().drop_guard(),
            background,
            server,
            peer_server,
            store,
            health,
            drain_timeout: settings.drain_timeout,
        })
    }

    /// Stops serving (letting calls in flight finish, bounded), stops every Raft group
    /// and closes the store.
    pub async fn shutdown(self) -> Result<(), StartError> {
        info!(node = self.inner.id, "shutting down");
        stop_serving(
            &self.health,
            &self.background.stop,
            self.server,
            self.drain_timeout,
        )
        .await;
        // Calls forwarded by peers drain within the same bound; Raft stops below.
        drain(self.peer_server, self.drain_timeout).await;
        // Every background loop ends at its next wait; a round under way finishes
        // first (it may be proposing), within the same bound.
        if !self.background.stop_and_wait(self.drain_timeout).await {
            warn!("background tasks still running after the drain timeout");
        }
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

/// The gRPC health service name of one hosted shard (`seatd.shard.N`), NOT_SERVING
/// once its group failed.
pub fn shard_health_name(shard: u32) -> String {
    format!("seatd.shard.{shard}")
}

/// What a node does when a Raft group stops by itself: the shard (and the node as a
/// whole) report NOT_SERVING, and the process exits for its supervisor to restart it.
/// Why exit rather than restart the group in place: the group stopped on a panic or a
/// storage error, after which the process's in-memory state for that group cannot be
/// trusted; a fresh process reopens it from what is durable, which is exactly what a
/// restart after a crash does, and that path is the one the fault suite tests.
async fn on_group_failure(
    mut failed: tokio::sync::mpsc::UnboundedReceiver<u32>,
    health: tonic_health::server::HealthReporter,
    exit: bool,
    stop: CancellationToken,
) {
    let Some(Some(shard)) = stop.run_until_cancelled(failed.recv()).await else {
        return;
    };
    health
        .set_service_status(
            shard_health_name(shard),
            tonic_health::ServingStatus::NotServing,
        )
        .await;
    health.set_not_serving::<SeatsService>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    if exit {
        tracing::error!(
            shard,
            code = GROUP_FAILED_EXIT_CODE,
            "a raft group failed; exiting for the supervisor to restart this node"
        );
        tokio::time::sleep(Duration::from_millis(GROUP_FAILED_EXIT_DELAY_MS)).await;
        std::process::exit(GROUP_FAILED_EXIT_CODE);
    }
    // Kept alive for tests: later failures only add NOT_SERVING shards.
    while let Some(Some(shard)) = stop.run_until_cancelled(failed.recv()).await {
        health
            .set_service_status(
                shard_health_name(shard),
                tonic_health::ServingStatus::NotServing,
            )
            .await;
    }
}

/// Serves the peer port over mutual TLS: the Raft transport and internal calls, and
/// the client API for calls other nodes forward here.
fn serve_peers(
    seats: SeatsService,
    raft: RaftService,
    tls: &PeerTls,
    listener: TcpListener,
    stopped: CancellationToken,
) -> Result<ServerTask, StartError> {
    let server = tonic::transport::Server::builder()
        .tls_config(tls.server())
        .map_err(|e| StartError::Config(format!("peer port TLS: {e}")))?
        .add_service(raft.into_server())
        .add_service(seats)
        .serve_with_incoming_shutdown(incoming(listener), async move { stopped.cancelled().await });
    Ok(tokio::spawn(server))
}

/// The address to advertise for a client listener bound to `addr`: itself, or this
/// host's name with its port when bound to every interface.
fn advertised(addr: std::net::SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return addr.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.len() < 200)
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", addr.port())
}

/// How often a node asks its peers where they serve clients: soon while some are
/// unknown, then now and then (a node restarted on another port).
const ADDRS_RETRY_MS: u64 = 500;
const ADDRS_REFRESH_MS: u64 = 10_000;

/// Learns every node's client address from the node itself, over the peer port.
async fn refresh_client_addrs(node: Arc<Process>, stop: CancellationToken) {
    let everyone: Vec<NodeId> = node.cluster.nodes().keys().copied().collect();
    loop {
        // peer_views records each answer's address.
        let _ =
            crate::cluster_view::peer_views(&node, &everyone, Duration::from_millis(1_000)).await;
        let known = everyone.iter().all(|id| node.client_addr(*id).is_some());
        let wait = if known {
            ADDRS_REFRESH_MS
        } else {
            ADDRS_RETRY_MS
        };
        if !pause(&stop, Duration::from_millis(wait)).await {
            return;
        }
    }
}

/// How often the bootstrapper asks the members again.
const BOOTSTRAP_RETRY_MS: u64 = 200;

/// Initialises `shard` once every member is up and none has state for it.
async fn bootstrap(node: Arc<Process>, shard: u32, stop: CancellationToken) {
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
        match crate::cluster_view::peer_views(&node, &everyone, Duration::from_millis(500)).await {
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
                    // No node has any state for the shard: it is new. The group
                    // starts as this node alone, whose gate opens now; the other
                    // members join as learners and are promoted once caught up
                    // (`membership`), so no closed gate has to elect anyone.
                    if let Err(e) = node.gates[&shard].open(&local.raft) {
                        warn!(shard, error = %e, "cannot open the gate to initialise");
                        return;
                    }
                    let me = BTreeMap::from([(
                        node.id,
                        BasicNode::new(node.cluster.addr(node.id).unwrap_or("")),
                    )]);
                    match local.raft.initialize(me).await {
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
        if !pause(&stop, Duration::from_millis(BOOTSTRAP_RETRY_MS)).await {
            return;
        }
    }
}
