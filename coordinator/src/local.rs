//! A whole cluster in one process: `n` nodes, each with its own RocksDB under
//! `DATA_DIR/node{id}`, talking over real loopback gRPC (mutual TLS between them,
//! with certificates made once in `DATA_DIR/certs`), and any number of frontends in
//! front of them.
//!
//! `seatd dev` is one of these with three nodes and one frontend; tests use it to
//! exercise routing, forwarding, limits and failover over the network without
//! spawning processes (process-level faults stay with the multi-process tests). It is
//! the same code as a real cluster, only in one process.
//!
//! Caveats: every node listens on a loopback port chosen at each start (the peers list
//! wins over the addresses Raft remembered, so changing ports between starts is
//! harmless); the nodes share one clock and one payment gateway.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_store::raft::{LogPolicy, NodeId, RaftTiming};
use tokio::net::TcpListener;

use crate::clock::SystemClock;
use crate::error::StartError;
use crate::frontend::{FrontendConfig, FrontendHandle};
use crate::node::{NodeConfig, NodeHandle};
use crate::payment::TestGateway;
use crate::placement::Cluster;
use crate::process::Settings;

pub use crate::limits::LOCAL_NODES_MAX;

pub struct LocalConfig {
    pub data_dir: PathBuf,
    /// Nodes, with ids 1..=nodes.
    pub nodes: u64,
    pub shards: u32,
    /// Every node's settings.
    pub settings: Settings,
    pub timing: RaftTiming,
    /// Checks bearer tokens on every node and frontend when set.
    pub auth: Option<Arc<crate::auth::Verifier>>,
    /// Serves every client port (nodes' and frontends') over TLS when set.
    pub tls: Option<LocalTls>,
}

/// TLS for a local cluster's client ports: one certificate for every process (it
/// names 127.0.0.1), and the CA frontends trust when they dial the nodes.
#[derive(Clone)]
pub struct LocalTls {
    pub server: tonic::transport::ServerTlsConfig,
    pub nodes_ca: tonic::transport::ClientTlsConfig,
}

/// How a frontend added to a local cluster caches.
#[derive(Clone, Copy, Debug)]
pub struct FrontendCaches {
    pub seat_map: Duration,
    pub event_list: Duration,
}

impl FrontendCaches {
    /// Nothing cached: every read reaches a node (for tests that look at state).
    pub const NONE: Self = Self {
        seat_map: Duration::ZERO,
        event_list: Duration::ZERO,
    };
}

pub struct LocalCluster {
    nodes: BTreeMap<NodeId, NodeHandle>,
    frontends: Vec<FrontendHandle>,
    /// Where each node serves clients, for frontends to discover the cluster from.
    client_addrs: Vec<String>,
    auth: Option<Arc<crate::auth::Verifier>>,
    tls: Option<LocalTls>,
}

impl LocalCluster {
    /// Starts every node (it does not wait for leaders: [`Self::wait_leaders`]).
    pub async fn start(config: LocalConfig) -> Result<Self, StartError> {
        if config.nodes == 0 || config.nodes > LOCAL_NODES_MAX {
            return Err(StartError::Config(format!(
                "a local cluster has 1..={LOCAL_NODES_MAX} nodes, not {}",
                config.nodes
            )));
        }
        let certs = config.data_dir.join("certs");
        let ids: Vec<NodeId> = (1..=config.nodes).collect();
        crate::tls::write_certs(&certs, &ids)?;
        let mut listeners = Vec::new();
        let mut peers = BTreeMap::new();
        let mut client_addrs = Vec::new();
        for &id in &ids {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let p = TcpListener::bind("127.0.0.1:0").await?;
            client_addrs.push(l.local_addr()?.to_string());
            peers.insert(id, p.local_addr()?.to_string());
            listeners.push((id, l, p));
        }
        let cluster = Cluster::new(peers, config.shards)?;
        let clock = Arc::new(SystemClock::default());
        let gateway = Arc::new(TestGateway::default());
        let mut nodes = BTreeMap::new();
        for (id, listener, peer_listener) in listeners {
            let node = NodeHandle::start(
                NodeConfig {
                    id,
                    data_dir: config.data_dir.join(format!("node{id}")),
                    cluster: cluster.clone(),
                    log_policy: LogPolicy::default(),
                    timing: config.timing,
                    settings: config.settings,
                    clock: clock.clone(),
                    gateway: gateway.clone(),
                    tls: crate::tls::PeerTls::load(&certs, id)?,
                    advertise: None,
                    auth: config.auth.clone(),
                    client_tls: config.tls.as_ref().map(|t| t.server.clone()),
                },
                listener,
                peer_listener,
            )
            .await?;
            nodes.insert(id, node);
        }
        Ok(Self {
            nodes,
            frontends: Vec::new(),
            client_addrs,
            auth: config.auth,
            tls: config.tls,
        })
    }

    /// Waits for every shard's leader, then starts a frontend without caches on a free
    /// loopback port; returns its address. What tests of a whole cluster start with.
    pub async fn ready_with_frontend(
        &mut self,
        settings: Settings,
        ready: Duration,
    ) -> Result<SocketAddr, StartError> {
        self.wait_leaders(ready).await?;
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        self.add_frontend(listener, settings, FrontendCaches::NONE)
            .await
    }

    /// Starts a frontend on `listener` in front of the nodes; returns its address.
    pub async fn add_frontend(
        &mut self,
        listener: TcpListener,
        settings: Settings,
        caches: FrontendCaches,
    ) -> Result<SocketAddr, StartError> {
        let frontend = FrontendHandle::start(
            FrontendConfig {
                nodes: self.client_addrs.clone(),
                seat_map_cache: caches.seat_map,
                event_list_cache: caches.event_list,
                settings,
                auth: self.auth.clone(),
                tls: self.tls.as_ref().map(|t| t.server.clone()),
                nodes_tls: self.tls.as_ref().map(|t| t.nodes_ca.clone()),
            },
            listener,
        )
        .await?;
        let addr = frontend.addr;
        self.frontends.push(frontend);
        Ok(addr)
    }

    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeHandle> {
        &self.nodes
    }

    /// The frontends' addresses, in the order they were added.
    pub fn frontend_addrs(&self) -> Vec<SocketAddr> {
        self.frontends.iter().map(|f| f.addr).collect()
    }

    /// Waits until every shard has a leader among the running nodes.
    pub async fn wait_leaders(&self, within: Duration) -> Result<(), StartError> {
        let shards = match self.nodes.values().next() {
            Some(n) => n.inner.cluster.shards() as usize,
            None => return Ok(()),
        };
        let started = Instant::now();
        loop {
            let led: std::collections::BTreeSet<u32> = self
                .nodes
                .values()
                .flat_map(|n| n.inner.shards.values())
                .filter(|s| s.leader().1)
                .map(|s| s.id)
                .collect();
            if led.len() == shards {
                return Ok(());
            }
            if started.elapsed() > within {
                return Err(StartError::Unavailable(format!(
                    "only {} of {shards} shards elected a leader in {} ms",
                    led.len(),
                    within.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops node `id` cleanly (a failover test's lost node); `None` if not running.
    pub async fn stop_node(&mut self, id: NodeId) -> Option<Result<(), StartError>> {
        let node = self.nodes.remove(&id)?;
        Some(node.shutdown().await)
    }

    /// Stops every frontend, then every node; each stops cleanly.
    pub async fn shutdown(self) -> Result<(), StartError> {
        for f in self.frontends {
            f.shutdown().await?;
        }
        for (_, n) in self.nodes {
            n.shutdown().await?;
        }
        Ok(())
    }
}
