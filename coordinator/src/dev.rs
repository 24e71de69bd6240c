//! `seatd dev`: a whole cluster in one process, for trying seatd on a laptop.
//!
//! A [`LocalCluster`] of three replicas and one frontend on a fixed address (default
//! 127.0.0.1:7400, where `seatctl` looks by default). The first start creates a small
//! demo event (`demo`, 100 seats); later starts keep every byte of data.
//!
//! It is the same code as a real cluster (same nodes, same frontend, real Raft over
//! gRPC, fsync on), just in one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raft_store::raft::RaftTiming;
use seatd_proto::v1 as pb;
use tokio::net::TcpListener;
use tracing::info;

use crate::clock::SystemClock;
use crate::error::StartError;
use crate::local::{FrontendCaches, LocalCluster, LocalConfig};
use crate::process::Settings;

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
    /// Holds one user may ask for per second, counted on the shard leaders (0: no
    /// limit).
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
    local: LocalCluster,
    endpoint: SocketAddr,
}

impl DevCluster {
    pub async fn start(config: DevConfig) -> Result<Self, StartError> {
        // Bind the frontend first: a busy port should fail before anything starts.
        let front_listener = TcpListener::bind(config.listen).await.map_err(|e| {
            StartError::Config(format!(
                "cannot listen on {} ({e}); is another seatd dev running? \
                 Use --listen to pick another address",
                config.listen
            ))
        })?;
        let settings = Settings {
            holds_per_user_per_s: config.holds_per_user_per_s,
            ..Settings::default()
        };
        let mut local = LocalCluster::start(LocalConfig {
            data_dir: config.data_dir.clone(),
            nodes: DEV_NODES,
            shards: DEV_SHARDS,
            settings,
            timing: RaftTiming::default(),
            auth: None,
        })
        .await?;
        let caches = FrontendCaches {
            seat_map: Duration::from_secs(1),
            event_list: Duration::from_secs(30),
        };
        let endpoint = local.add_frontend(front_listener, settings, caches).await?;
        let dev = Self { local, endpoint };
        dev.local
            .wait_leaders(Duration::from_millis(READY_MS_MAX))
            .await?;
        if config.create_demo {
            dev.create_demo().await?;
        }
        Ok(dev)
    }

    /// The URL clients connect to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.endpoint)
    }

    async fn create_demo(&self) -> Result<(), StartError> {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint())
            .map_err(|e| StartError::Config(e.to_string()))?
            .connect()
            .await
            .map_err(|e| StartError::Unavailable(e.to_string()))?;
        let mut client = pb::seats_client::SeatsClient::new(channel);
        let exists = client
            .get_event(pb::GetEventRequest {
                event_id: DEMO_EVENT.into(),
            })
            .await;
        match exists {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(demo_failed(s)),
        }
        let layout = raft_store::layout::preset("small").expect("the small preset exists");
        client
            .create_event(pb::CreateEventRequest {
                event_id: DEMO_EVENT.into(),
                name: "Demo night".into(),
                // A week from now, so the demo shows up as upcoming.
                starts_at_ms: crate::clock::Clock::now_ms(&SystemClock::default())
                    + 7 * 24 * 3_600_000,
                layout: Some(seatd_wire::layout_to_pb(&layout)),
                limits: None,
            })
            .await
            .map_err(demo_failed)?;
        info!(event = DEMO_EVENT, "created the demo event");
        Ok(())
    }

    /// Stops the frontend, then every node; each stops cleanly.
    pub async fn shutdown(self) -> Result<(), StartError> {
        self.local.shutdown().await
    }
}

fn demo_failed(status: tonic::Status) -> StartError {
    StartError::Unavailable(format!(
        "cannot create the demo event: {:?}: {}",
        status.code(),
        status.message()
    ))
}
