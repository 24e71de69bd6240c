//! `seatd dev`: a whole cluster in one process, for trying seatd on a laptop.
//!
//! A [`LocalCluster`] of three replicas and one frontend on a fixed address (default
//! 127.0.0.1:7400, where `seatctl` looks by default). The first start creates a small
//! demo event (`demo`, 100 seats); later starts keep every byte of data.
//!
//! It is the same code as a real cluster (same nodes, same frontend, real Raft over
//! gRPC, fsync on), just in one process.
//!
//! Authentication is on, as in production, with a signing key of its own: the first
//! start writes `dev-signing-key.pem` (readable by its owner only) and its public key
//! `dev-public-key.pem` into the data dir; every start issues a buyer token (subject
//! [`DEV_BUYER`]) and an operator token, valid [`DEV_TOKEN_TTL_S`], prints them and
//! writes them to `dev-tokens.json`, where `seatctl` finds them. `seatd token issue
//! --key <data-dir>/dev-signing-key.pem` makes tokens for any other user.

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

/// The subject of the buyer token `seatd dev` issues.
pub const DEV_BUYER: &str = "me";
/// The subject of the operator token `seatd dev` issues.
pub const DEV_OPERATOR: &str = "operator";
/// How long the tokens `seatd dev` issues last (each start issues new ones).
pub const DEV_TOKEN_TTL_S: u64 = 30 * 24 * 3_600;
/// The files `seatd dev` keeps in its data dir (`seatctl` reads the tokens file).
pub const DEV_SIGNING_KEY_FILE: &str = "dev-signing-key.pem";
pub const DEV_PUBLIC_KEY_FILE: &str = "dev-public-key.pem";
pub use seatd_wire::dev::DEV_TOKENS_FILE;

pub struct DevConfig {
    pub data_dir: PathBuf,
    /// Check bearer tokens (with the dev signing key).
    pub auth: bool,
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
            auth: true,
            create_demo: true,
            holds_per_user_per_s: Settings::default().holds_per_user_per_s,
        }
    }
}

pub struct DevCluster {
    local: LocalCluster,
    endpoint: SocketAddr,
    tokens: Option<DevTokens>,
}

/// The tokens a dev start issued.
#[derive(Clone, Debug)]
pub struct DevTokens {
    pub buyer: String,
    pub operator: String,
    /// Where they were written for `seatctl`.
    pub file: PathBuf,
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
        let (auth, tokens) = if config.auth {
            let bound = front_listener
                .local_addr()
                .map_err(|e| StartError::Config(format!("the frontend's address: {e}")))?;
            let (verifier, tokens) = dev_auth(&config.data_dir, bound)?;
            (Some(verifier), Some(tokens))
        } else {
            (None, None)
        };
        let mut local = LocalCluster::start(LocalConfig {
            data_dir: config.data_dir.clone(),
            nodes: DEV_NODES,
            shards: DEV_SHARDS,
            settings,
            timing: RaftTiming::default(),
            auth,
            tls: None,
        })
        .await?;
        let caches = FrontendCaches {
            seat_map: Duration::from_secs(1),
            event_list: Duration::from_secs(30),
        };
        let endpoint = local.add_frontend(front_listener, settings, caches).await?;
        let dev = Self {
            local,
            endpoint,
            tokens,
        };
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

    /// The tokens this start issued (`None` with authentication off).
    pub fn tokens(&self) -> Option<&DevTokens> {
        self.tokens.as_ref()
    }

    async fn create_demo(&self) -> Result<(), StartError> {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint())
            .map_err(|e| StartError::Config(e.to_string()))?
            .connect()
            .await
            .map_err(|e| StartError::Unavailable(e.to_string()))?;
        let operator = self.tokens.as_ref().map(|t| t.operator.clone());
        let mut client = pb::seats_client::SeatsClient::with_interceptor(
            channel,
            move |mut req: tonic::Request<()>| {
                if let Some(token) = &operator {
                    let value = format!("Bearer {token}")
                        .parse()
                        .map_err(|_| tonic::Status::internal("a token that is not ASCII"))?;
                    req.metadata_mut().insert("authorization", value);
                }
                Ok(req)
            },
        );
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

/// The dev signing key in `dir` (made on first start), a verifier of its tokens, and
/// new buyer and operator tokens, written to the tokens file for `seatctl`.
fn dev_auth(
    dir: &Path,
    listen: SocketAddr,
) -> Result<(std::sync::Arc<crate::auth::Verifier>, DevTokens), StartError> {
    use crate::auth::{issue, Role, Verifier, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
    let fail = |e: String| StartError::Config(format!("dev signing key: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let signing = dir.join(DEV_SIGNING_KEY_FILE);
    let private = match std::fs::read_to_string(&signing) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (private, _) = issue::new_key_pair().map_err(fail)?;
            issue::write_private(&signing, &private).map_err(fail)?;
            private
        }
        Err(e) => return Err(fail(format!("{}: {e}", signing.display()))),
    };
    // Derived from the signing key each start, so the two never disagree.
    let public = dir.join(DEV_PUBLIC_KEY_FILE);
    let public_pem = issue::public_of(&private).map_err(fail)?;
    std::fs::write(&public, public_pem).map_err(|e| fail(format!("{}: {e}", public.display())))?;
    let verifier = Verifier::from_file(&public, DEFAULT_ISSUER, DEFAULT_AUDIENCE).map_err(fail)?;
    let ttl = Duration::from_secs(DEV_TOKEN_TTL_S);
    let buyer = issue::token(&private, DEV_BUYER, Role::Buyer, ttl).map_err(fail)?;
    let operator = issue::token(&private, DEV_OPERATOR, Role::Operator, ttl).map_err(fail)?;
    let file = dir.join(DEV_TOKENS_FILE);
    let saved = seatd_wire::dev::DevTokensFile {
        endpoint: format!("http://{listen}"),
        buyer: buyer.clone(),
        operator: operator.clone(),
    };
    issue::write_private(&file, &saved.to_json()).map_err(fail)?;
    Ok((
        std::sync::Arc::new(verifier),
        DevTokens {
            buyer,
            operator,
            file,
        },
    ))
}
