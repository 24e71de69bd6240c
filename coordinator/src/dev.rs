//! `seatd dev`: a whole cluster in one process, for trying seatd on a laptop.
//!
//! Three replicas (each with its own RocksDB under `DATA_DIR/node{1,2,3}`, on
//! loopback ports chosen at each start, talking to each other over mutual TLS with
//! certificates made once in `DATA_DIR/certs`) and one frontend on a fixed address (default
//! 127.0.0.1:7400, where `seatctl` looks by default). The first start creates a small
//! demo event (`demo`, 100 seats); later starts keep every byte of data. The replicas
//! find each other through the current ports (the peers list wins over the addresses
//! Raft remembered), so changing ports between starts is harmless.
//!
//! It is the same code as a real cluster (same nodes, same frontend, real Raft over
//! gRPC, fsync on), just in one process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_store::raft::{LogPolicy, RaftTiming};
use seatd_proto::v1 as pb;
use tokio::net::TcpListener;
use tracing::info;

use crate::clock::SystemClock;
use crate::error::Error;
use crate::frontend::{FrontendConfig, FrontendHandle};
use crate::node::{NodeConfig, NodeHandle, Settings};
use crate::payment::TestGateway;
use crate::placement::Cluster;

/// The demo event created on first start.
pub const DEMO_EVENT: &str = "demo";
/// The dev cluster's shard count (fixed: the data dir remembers it).
pub const DEV_SHARDS: u32 = 8;
/// Replicas in the dev cluster.
pub const DEV_NODES: u64 = 3;
/// How long `start` waits for every shard to elect a leader.
const READY_MS_MAX: u64 = 30_000;

pub struct DevConfig {
    pub data_dir: PathBuf,
    /// The frontend's address: the endpoint clients use.
    pub listen: SocketAddr,
    pub create_demo: bool,
    /// Holds one user may ask for per second at the frontend (0: no limit).
    pub holds_per_user_per_s: u32,
}

impl DevConfig {
    /// A dev cluster in `dir` with its frontend on a free port.
    pub fn for_tests(dir: &Path) -> Self {
        Self {
            data_dir: dir.to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            create_demo: true,
            holds_per_user_per_s: Settings::default().holds_per_user_per_s,
        }
    }
}

pub struct DevCluster {
    nodes: Vec<NodeHandle>,
    frontend: FrontendHandle,
}

impl DevCluster {
    pub async fn start(config: DevConfig) -> Result<Self, Error> {
        // Bind the frontend first: a busy port should fail before anything starts.
        let front_listener = TcpListener::bind(config.listen).await.map_err(|e| {
            Error::Config(format!(
                "cannot listen on {} ({e}); is another seatd dev running? \
                 Use --listen to pick another address",
                config.listen
            ))
        })?;
        let certs = config.data_dir.join("certs");
        let ids: Vec<u64> = (1..=DEV_NODES).collect();
        crate::tls::write_certs(&certs, &ids)?;
        let mut listeners = Vec::new();
        let mut peers = BTreeMap::new();
        let mut client_addrs = Vec::new();
        for id in ids {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let p = TcpListener::bind("127.0.0.1:0").await?;
            client_addrs.push(l.local_addr()?.to_string());
            peers.insert(id, p.local_addr()?.to_string());
            listeners.push((id, l, p));
        }
        let cluster = Cluster::new(peers.clone(), DEV_SHARDS)?;
        let clock = Arc::new(SystemClock::default());
        let gateway = Arc::new(TestGateway::default());
        let mut nodes = Vec::new();
        for (id, listener, peer_listener) in listeners {
            let node = NodeHandle::start(
                NodeConfig {
                    id,
                    data_dir: config.data_dir.join(format!("node{id}")),
                    cluster: cluster.clone(),
                    log_policy: LogPolicy::default(),
                    timing: RaftTiming::default(),
                    settings: Settings::default(),
                    clock: clock.clone(),
                    gateway: gateway.clone(),
                    tls: crate::tls::PeerTls::load(&certs, id)?,
                    advertise: None,
                },
                listener,
                peer_listener,
            )
            .await?;
            nodes.push(node);
        }
        let frontend = FrontendHandle::start(
            FrontendConfig {
                nodes: client_addrs,
                seat_map_cache: Duration::from_secs(1),
                event_list_cache: Duration::from_secs(30),
                settings: Settings {
                    holds_per_user_per_s: config.holds_per_user_per_s,
                    ..Settings::default()
                },
            },
            front_listener,
        )
        .await?;
        let dev = Self { nodes, frontend };
        dev.wait_ready().await?;
        if config.create_demo {
            dev.create_demo().await?;
        }
        Ok(dev)
    }

    /// The URL clients connect to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.frontend.addr)
    }

    async fn wait_ready(&self) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            let led: std::collections::BTreeSet<u32> = self
                .nodes
                .iter()
                .flat_map(|n| n.inner.shards.values())
                .filter(|s| s.leader().1)
                .map(|s| s.id)
                .collect();
            if led.len() == DEV_SHARDS as usize {
                return Ok(());
            }
            if started.elapsed() > Duration::from_millis(READY_MS_MAX) {
                return Err(Error::Unavailable(format!(
                    "only {} of {DEV_SHARDS} shards elected a leader in {READY_MS_MAX} ms",
                    led.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn create_demo(&self) -> Result<(), Error> {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint())
            .map_err(|e| Error::Config(e.to_string()))?
            .connect()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let mut client = pb::seats_client::SeatsClient::new(channel);
        let exists = client
            .get_event(pb::GetEventRequest {
                event_id: DEMO_EVENT.into(),
            })
            .await;
        match exists {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(Error::Remote(s)),
        }
        let layout = raft_store::layout::preset("small").expect("the small preset exists");
        client
            .create_event(pb::CreateEventRequest {
                event_id: DEMO_EVENT.into(),
                name: "Demo night".into(),
                // A week from now, so the demo shows up as upcoming.
                starts_at_ms: crate::clock::Clock::now_ms(&SystemClock::default())
                    + 7 * 24 * 3_600_000,
                layout: Some(crate::convert::layout_to_pb(&layout)),
                limits: None,
            })
            .await
            .map_err(Error::Remote)?;
        info!(event = DEMO_EVENT, "created the demo event");
        Ok(())
    }

    /// Stops the frontend, then every node; each stops cleanly.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.frontend.shutdown().await?;
        for n in self.nodes {
            n.shutdown().await?;
        }
        Ok(())
    }
}
