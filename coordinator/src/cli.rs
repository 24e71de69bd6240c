//! The `seatd` command line, as a library function so that other binaries can be the
//! very same program (the fault-injection suite builds its own copy, since a test of
//! one package cannot ask cargo to build another package's binaries).
//!
//! `seatd node` runs a replica, `seatd frontend` a stateless gateway, `seatd dev` a
//! whole local cluster in one process; `seatd layout ...` generates and checks venue
//! files. Every subcommand exits non-zero with a one-line reason on stderr when it
//! cannot do its job; the servers exit 0 after a clean shutdown on SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use raft_store::layout::{generate, preset};
use raft_store::raft::{LogPolicy, RaftTiming};
use raft_store::VenueLayout;

#[derive(Parser)]
#[command(
    name = "seatd",
    version,
    about = "Raft-replicated seat coordinator for event ticketing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Venue layout files: generate and check them.
    #[command(subcommand)]
    Layout(LayoutCommand),
    /// Runs a replica: one Raft group per shard placed on this node.
    Node(NodeArgs),
    /// Runs a stateless gateway that forwards calls to shard leaders.
    Frontend(FrontendArgs),
    /// Runs a whole local cluster (3 replicas and a frontend) in one process.
    Dev(DevArgs),
    /// Creates a cluster CA and node certificates for the peer port (keeps existing
    /// files, so it can be run again to add nodes).
    Certs(CertsArgs),
    /// Signing keys and bearer tokens, for operators' scripts, tests and local use.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Last resort, on a STOPPED node, when most replicas of a shard lost their disks:
    /// makes this node's copy the shard's only voter. Entries that only the lost
    /// replicas held are gone for good. See README, "Re-forming a shard".
    Reform(ReformArgs),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Writes a new Ed25519 key pair: DIR/signing-key.pem (keep it secret) and
    /// DIR/public-key.pem (give it to nodes and frontends as --auth-keys).
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Write public-key.pem here instead (a directory nodes may read that holds
        /// no secret).
        #[arg(long)]
        public_out: Option<PathBuf>,
        /// When the key pair is already there, keep it and succeed (for a one-shot
        /// init container); without it an existing pair is an error, never replaced.
        #[arg(long)]
        keep: bool,
    },
    /// Prints a token for a user, signed with a signing key (PEM).
    Issue {
        /// The signing key (`seatd token keygen`'s signing-key.pem, or `seatd dev`'s
        /// dev-signing-key.pem).
        #[arg(long)]
        key: PathBuf,
        /// The user id the token names (`sub`).
        #[arg(long)]
        sub: String,
        /// buyer or operator.
        #[arg(long, default_value = "buyer")]
        role: crate::auth::Role,
        /// How long the token is valid: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

/// A duration written as a number and a unit: 90s, 30m, 1h, 7d.
fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = number
        .parse()
        .with_context(|| format!("--ttl {text:?}: a number and s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3_600,
        "d" => n * 86_400,
        _ => bail!("--ttl {text:?}: a number and s, m, h or d"),
    };
    // A year at most: a token is no substitute for a key.
    anyhow::ensure!(
        secs > 0 && secs <= 366 * 86_400,
        "--ttl {text:?}: 1s to 366d"
    );
    Ok(Duration::from_secs(secs))
}

fn run_token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Keygen {
            out,
            public_out,
            keep,
        } => {
            let public_dir = public_out.as_deref().unwrap_or(&out);
            let made = crate::auth::issue::keygen_into(&out, public_dir, keep)
                .map_err(anyhow::Error::msg)?;
            let verb = if made.kept { "kept" } else { "created" };
            println!("{verb} {}", made.signing.display());
            println!("{verb} {}", made.public.display());
        }
        TokenCommand::Issue {
            key,
            sub,
            role,
            ttl,
        } => {
            let private = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read {}", key.display()))?;
            let token = crate::auth::issue::token(&private, &sub, role, parse_ttl(&ttl)?)
                .map_err(anyhow::Error::msg)?;
            println!("{token}");
        }
    }
    Ok(())
}

#[derive(Args)]
struct ReformArgs {
    /// The stopped node's data directory (the most advanced surviving copy).
    #[arg(long)]
    data_dir: PathBuf,
    /// The shard to re-form.
    #[arg(long)]
    shard: u32,
    /// Confirms that acknowledged writes only the lost replicas held may be lost.
    #[arg(long)]
    yes: bool,
}

#[derive(Args)]
struct CertsArgs {
    /// Directory to write ca.pem, ca.key, node-N.pem and node-N.key into.
    #[arg(long)]
    out: PathBuf,
    /// Node ids to make certificates for, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<u64>,
}

#[derive(Args)]
struct FrontendArgs {
    /// Address to serve the client API on.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Some or all node addresses, comma-separated; the rest are learned from them.
    /// `ID=ADDR` pins how this frontend reaches node ID.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// How long a seat map asked for with stale_ok may be served from the cache.
    #[arg(long, default_value_t = 1_000)]
    seat_map_cache_ms: u64,
    /// How long an event list may be served from the cache.
    #[arg(long, default_value_t = 30_000)]
    event_list_cache_ms: u64,
    /// How long a call waits for a shard leader before failing with UNAVAILABLE.
    #[arg(long, default_value_t = 5_000)]
    route_wait_ms: u64,
    /// Accepted for existing scripts and ignored: the per-user hold limit is counted
    /// on each shard's leader, for every entry point at once (the nodes' flag).
    #[arg(long, default_value_t = 20)]
    holds_per_user_per_s: u32,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    tls: ClientPortTls,
    /// The CA that signed the nodes' client-port certificates: with it, this frontend
    /// reaches the nodes over TLS (for nodes started with --tls-cert).
    #[arg(long)]
    nodes_ca: Option<PathBuf>,
    #[command(flatten)]
    threads: Threads,
}

/// TLS on the client port: on when both files are given.
#[derive(Args)]
struct ClientPortTls {
    /// The client port's certificate chain (PEM); clients then connect with https://.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ClientPortTls {
    fn server(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::tls::client_port_server(cert, key)?)),
            _ => Ok(None),
        }
    }
}

/// Bearer tokens: checked on every call when `--auth-keys` is given.
#[derive(Args)]
struct AuthArgs {
    /// The public keys tokens may be signed with: a JWKS file or PEM public keys
    /// (`seatd token keygen` writes one). Read again when it changes. Without it,
    /// calls are not authenticated.
    #[arg(long)]
    auth_keys: Option<PathBuf>,
    /// The `iss` tokens must name.
    #[arg(long, default_value = crate::auth::DEFAULT_ISSUER)]
    auth_issuer: String,
    /// The `aud` tokens must name.
    #[arg(long, default_value = crate::auth::DEFAULT_AUDIENCE)]
    auth_audience: String,
    /// Calls without a valid token (missing or bad tokens, and cluster status, which
    /// needs none) one client address may make per second (0: no limit).
    #[arg(long, default_value_t = 50)]
    anonymous_calls_per_address_per_s: u32,
}

impl AuthArgs {
    fn verifier(&self) -> anyhow::Result<Option<Arc<crate::auth::Verifier>>> {
        let Some(path) = &self.auth_keys else {
            return Ok(None);
        };
        let v = crate::auth::Verifier::from_file(path, &self.auth_issuer, &self.auth_audience)
            .map_err(anyhow::Error::msg)?;
        Ok(Some(Arc::new(v)))
    }
}

/// How many threads run a server's async work.
#[derive(Args)]
struct Threads {
    /// Threads for this server's work (default: one per core). Several servers sharing
    /// a small machine waste less time switching between threads with 1 each.
    #[arg(long)]
    worker_threads: Option<usize>,
}

#[derive(Args)]
struct DevArgs {
    /// Where the three replicas keep their data.
    #[arg(long, default_value = "./seatd-data")]
    data_dir: PathBuf,
    /// The endpoint clients use (seatctl's default).
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: std::net::SocketAddr,
    /// Holds one user may ask for per second (0: no limit).
    #[arg(long, default_value_t = 20)]
    holds_per_user_per_s: u32,
    /// Accept calls without tokens (authentication is on by default, with a dev
    /// signing key kept in the data dir).
    #[arg(long)]
    no_auth: bool,
}

#[derive(Args)]
struct NodeArgs {
    /// This node's id (a key of --peers).
    #[arg(long)]
    id: u64,
    /// Address for the client API, health and reflection (anyone may call).
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Address for the Raft transport and calls between nodes (mutual TLS, cluster
    /// nodes only); the address --peers gives for this node.
    #[arg(long)]
    peer_listen: std::net::SocketAddr,
    /// The client address to tell others (default: --listen, with this host's name
    /// when it listens on every interface).
    #[arg(long)]
    advertise: Option<String>,
    /// Directory with ca.pem and this node's node-N.pem and node-N.key (`seatd certs`).
    #[arg(long)]
    certs: PathBuf,
    /// Where this node keeps its data (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Every node's peer address, this one included: 1=HOST:PORT,2=HOST:PORT,...
    #[arg(long)]
    peers: String,
    /// Shards of the cluster; fixed when the cluster is created.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Snapshot a shard after this many entries.
    #[arg(long, default_value_t = LogPolicy::default().logs_since_snapshot)]
    snapshot_logs: u64,
    /// Log entries kept behind a snapshot for slightly lagging followers.
    #[arg(long, default_value_t = LogPolicy::default().logs_kept_after_snapshot)]
    keep_logs: u64,
    /// How long a call waits for a shard leader before failing with UNAVAILABLE.
    #[arg(long, default_value_t = 5_000)]
    route_wait_ms: u64,
    /// How long a charge may take before its outcome counts as unknown.
    #[arg(long, default_value_t = 3_000)]
    payment_timeout_ms: u64,
    /// Holds one user may ask for per second, counted where holds are decided: on the
    /// leader of the event's shard, whichever frontend or node they came through
    /// (0: no limit).
    #[arg(long, default_value_t = 20)]
    holds_per_user_per_s: u32,
    /// For fault tests: stamp entries as if this node's clock were off by this much.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true, hide = true)]
    clock_skew_ms: i64,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    tls: ClientPortTls,
    #[command(flatten)]
    threads: Threads,
}

#[derive(Subcommand)]
enum LayoutCommand {
    /// Prints a layout as JSON: a named preset or a rectangular venue.
    Generate(GenerateArgs),
    /// Validates a layout file and prints its size.
    Check {
        /// The layout file (JSON, see README.md).
        file: PathBuf,
    },
}

#[derive(Args)]
struct GenerateArgs {
    /// small (100 seats), arena (20,000) or stadium (100,000).
    #[arg(long, conflicts_with_all = ["sections", "rows", "seats_per_row"])]
    preset: Option<String>,
    /// Number of sections of a rectangular venue.
    #[arg(long, default_value_t = 1)]
    sections: u32,
    /// Rows per section.
    #[arg(long, default_value_t = 10)]
    rows: u32,
    /// Seats per row.
    #[arg(long, default_value_t = 50)]
    seats_per_row: u32,
    /// The venue's name.
    #[arg(long, default_value = "Venue")]
    venue: String,
}

/// Our own notable events at info; openraft's internals only when asked for
/// (`RUST_LOG=info,openraft=warn`): it logs errors on every retry while a peer is
/// down, where `peer unreachable` says it once. A group that stops is still logged,
/// by the shard's watcher.
const DEFAULT_LOG_FILTER: &str = "info,openraft=off";

fn init_logs(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn runtime(threads: Option<&Threads>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads.and_then(|t| t.worker_threads) {
        if n == 0 {
            bail!("--worker-threads must be at least 1");
        }
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run_frontend(args: FrontendArgs) -> anyhow::Result<()> {
    use crate::frontend::{FrontendConfig, FrontendHandle};
    init_logs(DEFAULT_LOG_FILTER);
    let config = FrontendConfig {
        nodes: args.nodes,
        seat_map_cache: Duration::from_millis(args.seat_map_cache_ms),
        event_list_cache: Duration::from_millis(args.event_list_cache_ms),
        settings: crate::process::Settings {
            route_wait: Duration::from_millis(args.route_wait_ms),
            holds_per_user_per_s: args.holds_per_user_per_s,
            anonymous_calls_per_address_per_s: args.auth.anonymous_calls_per_address_per_s,
            ..Default::default()
        },
        auth: args.auth.verifier()?,
        tls: args.tls.server()?,
        nodes_tls: args
            .nodes_ca
            .as_deref()
            .map(crate::tls::client_port_dialer)
            .transpose()?,
    };
    runtime(Some(&args.threads))?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let frontend = FrontendHandle::start(config, listener).await?;
        tracing::info!(addr = %frontend.addr, "serving");
        shutdown_signal().await?;
        frontend.shutdown().await?;
        anyhow::Ok(())
    })
}

fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    use crate::dev::{DevCluster, DevConfig, DEMO_EVENT};
    init_logs("warn,openraft=off,crate::dev=info");
    runtime(None)?.block_on(async move {
        let dev = DevCluster::start(DevConfig {
            data_dir: args.data_dir.clone(),
            listen: args.listen,
            auth: !args.no_auth,
            create_demo: true,
            holds_per_user_per_s: args.holds_per_user_per_s,
        })
        .await?;
        let endpoint = dev.endpoint();
        println!("seatd dev: 3 replicas and a frontend, data in {}", args.data_dir.display());
        println!("endpoint: {endpoint}");
        match dev.tokens() {
            Some(t) => {
                use crate::dev::{DEV_BUYER, DEV_SIGNING_KEY_FILE};
                println!("tokens:   seatctl reads them from {}", t.file.display());
                println!("  buyer {DEV_BUYER:?}: {}", t.buyer);
                println!("  operator:   {}", t.operator);
                println!(
                    "  another user: cargo run -p seatd -- token issue --key {} --sub alice --role buyer",
                    args.data_dir.join(DEV_SIGNING_KEY_FILE).display()
                );
            }
            None => println!("tokens:   not checked (--no-auth)"),
        }
        println!("try:      cargo run -p seatd-client --bin seatctl -- seatmap {DEMO_EVENT}");
        println!("          cargo run -p seatd-client --bin seatctl -- hold {DEMO_EVENT} --seats A-1,A-2");
        println!("Ctrl-C stops it; the next start keeps the data.");
        shutdown_signal().await?;
        dev.shutdown().await?;
        println!("seatd dev: stopped");
        anyhow::Ok(())
    })
}

fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    use crate::node::{NodeConfig, NodeHandle};
    use crate::placement::Cluster;
    use crate::process::Settings;
    init_logs(DEFAULT_LOG_FILTER);
    let cluster = Cluster::new(Cluster::parse_peers(&args.peers)?, args.shards)?;
    let config = NodeConfig {
        id: args.id,
        data_dir: args.data_dir,
        cluster,
        log_policy: LogPolicy {
            logs_since_snapshot: args.snapshot_logs,
            logs_kept_after_snapshot: args.keep_logs,
        },
        timing: RaftTiming::default(),
        settings: Settings {
            route_wait: Duration::from_millis(args.route_wait_ms),
            payment_timeout: Duration::from_millis(args.payment_timeout_ms),
            holds_per_user_per_s: args.holds_per_user_per_s,
            anonymous_calls_per_address_per_s: args.auth.anonymous_calls_per_address_per_s,
            ..Settings::default()
        },
        clock: Arc::new(crate::clock::SystemClock::with_skew(args.clock_skew_ms)),
        gateway: Arc::new(crate::payment::TestGateway::default()),
        tls: crate::tls::PeerTls::load(&args.certs, args.id)?,
        advertise: args.advertise,
        auth: args.auth.verifier()?,
        client_tls: args.tls.server()?,
    };
    runtime(Some(&args.threads))?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let peer_listener = tokio::net::TcpListener::bind(args.peer_listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.peer_listen))?;
        let node = NodeHandle::start(config, listener, peer_listener).await?;
        tracing::info!(addr = %node.addr, peer_addr = %node.peer_addr, "serving");
        shutdown_signal().await?;
        node.shutdown().await?;
        anyhow::Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => {
            r.context("cannot watch Ctrl-C")?;
            tracing::info!("Ctrl-C received");
        }
    }
    Ok(())
}

fn run_reform(args: ReformArgs) -> anyhow::Result<()> {
    if !args.yes {
        bail!(
            "seatd reform makes {}'s copy of shard {} the shard's only voter: entries \
             that only other replicas held are lost for good. Run it only on a stopped \
             node with the most advanced surviving copy, when most replicas lost their \
             disks, and confirm with --yes",
            args.data_dir.display(),
            args.shard
        );
    }
    let (node, done) = crate::reform::reform(&args.data_dir, args.shard)?;
    eprintln!(
        "WARNING: shard {} re-formed on node {node}: it was at {}-{} with voters {:?}; \
         entry {}-{} now makes node {node} its only voter. Anything committed after \
         {}-{} by the other replicas is lost. Start this node, then the others with \
         empty data dirs: they rejoin as learners and are promoted once caught up.",
        args.shard,
        done.last_before.leader_id.term,
        done.last_before.index,
        done.voters_before,
        done.entry.leader_id.term,
        done.entry.index,
        done.last_before.leader_id.term,
        done.last_before.index,
    );
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node(args) => run_node(args)?,
        Command::Frontend(args) => run_frontend(args)?,
        Command::Dev(args) => run_dev(args)?,
        Command::Certs(args) => {
            let written = crate::tls::write_certs(&args.out, &args.nodes)?;
            for path in &written.created {
                println!("created {}", path.display());
            }
            for path in &written.kept {
                println!("kept    {}", path.display());
            }
        }
        Command::Reform(args) => run_reform(args)?,
        Command::Token(command) => run_token(command)?,
        Command::Layout(LayoutCommand::Generate(args)) => {
            let layout = match &args.preset {
                Some(name) => match preset(name) {
                    Some(layout) => layout,
                    None => bail!("unknown preset {name:?}: use small, arena or stadium"),
                },
                None => generate(&args.venue, args.sections, args.rows, args.seats_per_row),
            };
            // Refuse to print a layout the state machine would refuse.
            layout
                .plan()
                .map_err(anyhow::Error::msg)
                .context("generated layout is invalid")?;
            println!("{}", layout.to_json_pretty());
        }
        Command::Layout(LayoutCommand::Check { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let layout = VenueLayout::from_json(&text)
                .and_then(|l| l.plan().map(|p| (l, p)))
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{} is not a valid layout", file.display()));
            let (layout, plan) = layout?;
            println!(
                "{}: venue {:?}, {} sections, {} rows, {} seats",
                file.display(),
                layout.venue,
                layout.sections.len(),
                plan.rows.len(),
                plan.seats.len()
            );
        }
    }
    Ok(())
}

/// Parses the process's arguments and runs the command.
pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seatd: {e:#}");
            ExitCode::from(2)
        }
    }
}
