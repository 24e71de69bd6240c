//! `seatd`: the seat coordinator's command line.
//!
//! `seatd node` runs a replica; `seatd layout ...` generates and checks venue files.
//! (The gateway, `seatd frontend`, and the one-process local cluster, `seatd dev`,
//! come with issue 5.) Every subcommand exits non-zero with a one-line reason on stderr
//! when it cannot do its job; `seatd node` exits 0 after a clean shutdown on SIGTERM or
//! Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use raft_store::layout::{generate, preset};
use raft_store::raft::{LogPolicy, RaftTiming};
use raft_store::VenueLayout;

// Many small, short-lived allocations per command: mimalloc handles them far better
// than the system allocator (see raft-store's apply benchmark).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
}

#[derive(Args)]
struct NodeArgs {
    /// This node's id (a key of --peers).
    #[arg(long)]
    id: u64,
    /// Address for the client API, the Raft transport, health and reflection.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Where this node keeps its data (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Every node of the cluster, this one included: 1=HOST:PORT,2=HOST:PORT,...
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
    /// For fault tests: stamp entries as if this node's clock were off by this much.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true, hide = true)]
    clock_skew_ms: i64,
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

fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    use coordinator::node::{NodeConfig, NodeHandle, Settings};
    use coordinator::placement::Cluster;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
            ..Settings::default()
        },
        clock: Arc::new(coordinator::clock::SystemClock::with_skew(
            args.clock_skew_ms,
        )),
        gateway: Arc::new(coordinator::payment::TestGateway::default()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let node = NodeHandle::start(config, listener).await?;
        tracing::info!(addr = %node.addr, "serving");
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node(args) => run_node(args)?,
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seatd: {e:#}");
            ExitCode::from(2)
        }
    }
}
