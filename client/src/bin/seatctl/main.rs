//! `seatctl`: seatd from the command line, for people and for scripts.
//!
//! The contract scripts rely on (flags, `--json` keys, exit codes) is in README.md:
//! exit 0 ok, 2 invalid, 3 conflict, 4 expired, 5 not found, 6 rate limited,
//! 7 unavailable, 8 internal, 9 unauthenticated, 10 permission denied. With `--json`, stdout carries exactly one JSON document, an answer
//! or `{"error": {"code", "message"}}`.

mod bench;
mod output;

// `seatctl bench` shares the machine with the cluster it measures; with the system
// allocator its buyers spent a fifth of their CPU in malloc and free.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use seatd_client::{layout_to_pb, pb, Access, Client, Error, Options, DEFAULT_ENDPOINT};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "seatctl", version, about = "Talk to a seatd cluster")]
struct Cli {
    /// A frontend or node to talk to (repeat for several; default: seatd dev's).
    #[arg(long = "endpoint", global = true)]
    endpoints: Vec<String>,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Print only the id of what the command made or named (a hold's, an order's, an
    /// event's), for scripts: `hold=$(seatctl hold demo --seats A-1 -q)`.
    #[arg(long, short, global = true, conflicts_with = "json")]
    quiet: bool,
    /// Give up on a call (after retries) after this long, e.g. 30s.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// A bearer token (JWT) sent with every call, for clusters that check them.
    /// Without one, talking to `seatd dev`'s endpoint, seatctl uses the tokens `seatd
    /// dev` left in its data dir (the operator's for `event create` and `bench`, the
    /// buyer's for the rest).
    #[arg(long, global = true, env = "SEATD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate (PEM) that signed the cluster's client-port certificates,
    /// for https:// endpoints (the system's roots are trusted too).
    #[arg(long, global = true, env = "SEATD_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Where `seatd dev` keeps its data (and its tokens).
    #[arg(long, global = true, env = "SEATD_DEV_DIR", default_value = seatd_wire::dev::DEV_DATA_DIR_DEFAULT)]
    dev_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create and list events.
    #[command(subcommand)]
    Event(EventCommand),
    /// Draw an event's seat map.
    Seatmap {
        event: String,
        /// Accept a map from any replica or a frontend's cache (it says how old).
        #[arg(long)]
        stale: bool,
        /// Only this section's seats (every section's counts are still shown).
        #[arg(long)]
        section: Option<String>,
    },
    /// Hold seats for a user.
    Hold(HoldArgs),
    /// Pay for a hold and turn it into an order.
    Commit {
        hold: String,
        #[arg(long)]
        payment_token: String,
        /// Retry key: the same key never charges twice (generated when absent).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Give a hold's seats back.
    Release {
        hold: String,
        /// The hold's owner (looked up when absent).
        #[arg(long)]
        user: Option<String>,
    },
    /// Show a hold.
    HoldStatus { hold: String },
    /// List an event's holds in the order they were granted (operators).
    Holds {
        event: String,
        /// Only holds numbered above this one (a page's `next_after`).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many (default: the server's, 100).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Show an order.
    Order { order: String },
    /// Show the cluster: nodes, and each shard's leader, members and applied index.
    Status,
    /// Print `export SEATD_TOKEN=...` for a token, to run as
    /// `eval "$(seatctl login --dev)"`.
    Login {
        /// The token `seatd dev` issued (from its data dir, see --dev-dir).
        #[arg(long, required = true)]
        dev: bool,
        /// The operator's token instead of the buyer's.
        #[arg(long)]
        operator: bool,
    },
    /// A flash-sale load test that checks for oversell (prints key=value pairs).
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum EventCommand {
    /// Create an event from a layout file or as a rectangular venue.
    Create(CreateArgs),
    /// List events, by start time.
    List {
        #[arg(long, value_parser = parse_time)]
        from: Option<u64>,
        #[arg(long, value_parser = parse_time)]
        to: Option<u64>,
        /// Text in the name or venue (case-insensitive).
        #[arg(long)]
        q: Option<String>,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// A layout file (JSON, see README.md).
    #[arg(long, conflicts_with_all = ["sections", "rows", "seats_per_row"])]
    layout: Option<PathBuf>,
    #[arg(long, requires_all = ["rows", "seats_per_row"])]
    sections: Option<u32>,
    #[arg(long, requires_all = ["sections", "seats_per_row"])]
    rows: Option<u32>,
    #[arg(long, requires_all = ["sections", "rows"])]
    seats_per_row: Option<u32>,
    #[arg(long, default_value = "Event")]
    name: String,
    /// The venue's name for a generated layout.
    #[arg(long, default_value = "Venue")]
    venue: String,
    #[arg(long, value_parser = parse_time)]
    starts_at: Option<u64>,
    /// The event id (generated when absent).
    #[arg(long)]
    id: Option<String>,
}

#[derive(Args)]
struct HoldArgs {
    event: String,
    /// Whom the hold is for (default: the token's subject; a buyer's token may name
    /// only its subject).
    #[arg(long, default_value = "")]
    user: String,
    /// Comma-separated seat ids, e.g..
    #[arg(long, value_delimiter = ',', required = true)]
    seats: Vec<String>,
    /// How long to hold, e.g. 300s (default: the event's).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Retry key: the same id always gets the first answer (generated when absent).
    #[arg(long)]
    request_id: Option<String>,
}

/// RFC 3339 → ms since the epoch.
fn parse_time(s: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("{s:?}: {e}"))?;
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| format!("{s:?} is before 1970"))
}

fn layout(args: &CreateArgs) -> Result<pb::Layout, Error> {
    let layout = match (&args.layout, args.sections, args.rows, args.seats_per_row) {
        (Some(file), ..) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", file.display())))?;
            raft_store::VenueLayout::from_json(&text).map_err(Error::Invalid)?
        }
        (None, Some(sections), Some(rows), Some(seats)) => {
            raft_store::layout::generate(&args.venue, sections, rows, seats)
        }
        _ => {
            return Err(Error::Invalid(
                "give --layout FILE, or --sections N --rows N --seats-per-row N".into(),
            ))
        }
    };
    layout.plan().map_err(Error::Invalid)?;
    Ok(layout_to_pb(&layout))
}

/// Runs the command; the answer as JSON and as text.
async fn run(cli: &Cli, client: &Client) -> Result<(Value, String), Error> {
    use output::*;
    Ok(match &cli.command {
        Command::Event(EventCommand::Create(args)) => {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let e = client
                .create_event(pb::CreateEventRequest {
                    event_id: args.id.clone().unwrap_or_default(),
                    name: args.name.clone(),
                    starts_at_ms: args.starts_at.unwrap_or(now_ms),
                    layout: Some(layout(args)?),
                    limits: None,
                })
                .await?;
            (event_json(&e), format!("created {}", event_text(&e)))
        }
        Command::Event(EventCommand::List { from, to, q }) => {
            let list = client
                .list_events(pb::ListEventsRequest {
                    from_ms: *from,
                    to_ms: *to,
                    q: q.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .await?;
            let text = if list.events.is_empty() {
                "no events".to_string()
            } else {
                list.events
                    .iter()
                    .map(event_text)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            (events_json(&list), text)
        }
        Command::Seatmap {
            event,
            stale,
            section,
        } => {
            let map = client
                .seat_map_part(pb::GetSeatMapRequest {
                    event_id: event.clone(),
                    stale_ok: *stale,
                    section: section.clone(),
                    ..Default::default()
                })
                .await?;
            (seat_map_json(&map), seat_map_text(&map))
        }
        Command::Hold(args) => {
            let seats: Vec<&str> = args.seats.iter().map(String::as_str).collect();
            let h = client
                .hold(
                    &args.event,
                    &args.user,
                    &seats,
                    args.ttl,
                    args.request_id.as_deref(),
                )
                .await?;
            (hold_json(&h), hold_text(&h))
        }
        Command::Commit {
            hold,
            payment_token,
            idempotency_key,
        } => {
            let o = client
                .commit(hold, payment_token, idempotency_key.as_deref())
                .await?;
            (order_json(&o), order_text(&o))
        }
        Command::Release { hold, user } => {
            let user = match user {
                Some(u) => u.clone(),
                None => client.hold_status(hold).await?.user_id,
            };
            let h = client.release(hold, &user).await?;
            (hold_json(&h), hold_text(&h))
        }
        Command::HoldStatus { hold } => {
            let h = client.hold_status(hold).await?;
            (hold_json(&h), hold_text(&h))
        }
        Command::Holds {
            event,
            after,
            limit,
        } => {
            let page = client.list_holds(event, *after, *limit).await?;
            (holds_json(&page), holds_text(&page))
        }
        Command::Order { order } => {
            let o = client.order(order).await?;
            (order_json(&o), order_text(&o))
        }
        Command::Status => {
            let s = client.status().await?;
            (status_json(&s), status_text(&s))
        }
        Command::Login { .. } | Command::Bench(_) => {
            unreachable!("login and bench run before a client is made")
        }
    })
}

/// The bench runs on a runtime of its own, with `--threads` workers.
fn run_bench(
    endpoints: &[String],
    args: bench::BenchArgs,
    options: Options,
    access: &Access,
) -> ExitCode {
    if !(1..=bench::THREADS_MAX).contains(&args.threads) {
        eprintln!(
            "seatctl bench: --threads must be 1 to {}, not {}",
            bench::THREADS_MAX,
            args.threads
        );
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("seatctl: cannot start the async runtime: {e}");
            return ExitCode::from(7);
        }
    };
    let options = Options {
        batch_holds: !args.no_batch,
        route_to_leaders: args.route,
        ..options
    };
    let outcome = rt.block_on(async {
        let client = std::sync::Arc::new(Client::connect(endpoints, options, access)?);
        bench::run(client, args).await
    });
    match outcome {
        Ok((line, ok)) => {
            println!("{line}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("seatctl bench: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let endpoints = if cli.endpoints.is_empty() {
        vec![DEFAULT_ENDPOINT.to_string()]
    } else {
        cli.endpoints.clone()
    };
    let options = Options {
        attempt_timeout: cli.timeout.min(Options::default().attempt_timeout),
        retry_budget: cli.timeout,
        ..Options::default()
    };
    let access = match token_for(&cli).and_then(|token| {
        Ok(Access {
            token,
            ca_pem: cli.ca_file.as_deref().map(read_ca).transpose()?,
        })
    }) {
        Ok(a) => a,
        Err(e) => return fail(&cli, &e),
    };
    if let Command::Login { operator, .. } = &cli.command {
        return login(&cli, *operator);
    }
    if let Command::Bench(args) = &cli.command {
        return run_bench(&endpoints, args.clone(), options, &access);
    }
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Unavailable(format!("cannot start the async runtime: {e}")))
        .and_then(|rt| {
            rt.block_on(async {
                let client = Client::connect(&endpoints, options, &access)?;
                run(&cli, &client).await
            })
        });
    match outcome {
        Ok((json, text)) => {
            match quiet_id(&cli, &json) {
                Some(id) => println!("{id}"),
                None if cli.json => println!("{json}"),
                None => println!("{text}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&cli, &e),
    }
}

/// With `--quiet`, the id to print instead of the answer: an order's for `commit` and
/// `order`, a hold's for the hold commands, an event's for `event create`.
fn quiet_id<'a>(cli: &Cli, json: &'a Value) -> Option<&'a str> {
    if !cli.quiet {
        return None;
    }
    let key = match cli.command {
        Command::Commit { .. } | Command::Order { .. } => "order_id",
        Command::Hold(_) | Command::Release { .. } | Command::HoldStatus { .. } => "hold_id",
        Command::Event(EventCommand::Create(_)) => "event_id",
        _ => return None,
    };
    json.get(key).and_then(Value::as_str)
}

/// The most bytes of a CA file read (a few certificates).
const CA_FILE_BYTES_MAX: u64 = 64 * 1024;

/// The CA file's PEM, bounded.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let bad = |e: String| Error::Invalid(format!("--ca-file {}: {e}", path.display()));
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(CA_FILE_BYTES_MAX + 1).read_to_end(&mut pem))
        .map_err(|e| bad(e.to_string()))?;
    if pem.len() as u64 > CA_FILE_BYTES_MAX {
        return Err(bad(format!("larger than {CA_FILE_BYTES_MAX} bytes")));
    }
    Ok(pem)
}

/// Reports `e` (as JSON with `--json`) and gives its exit code.
fn fail(cli: &Cli, e: &Error) -> ExitCode {
    if cli.json {
        println!("{}", output::error_json(e));
    } else {
        eprintln!("seatctl: {e}");
    }
    ExitCode::from(e.exit_code())
}

/// The token to send: `--token` (or `SEATD_TOKEN`), else, when talking to the
/// endpoint `seatd dev` wrote down (or to the default one), the token it issued for
/// this command: the operator's for what only operators may do (creating events) and
/// for `bench` (whose buyers are many users), the buyer's for the rest.
fn token_for(cli: &Cli) -> Result<Option<String>, Error> {
    if let Some(t) = &cli.token {
        return Ok(Some(t.clone()));
    }
    let Some(saved) = seatd_wire::dev::DevTokensFile::read(&cli.dev_dir).map_err(Error::Invalid)?
    else {
        return Ok(None);
    };
    let ours =
        |e: &String| seatd_wire::net::endpoint_url(e).as_deref() == Some(saved.endpoint.as_str());
    let to_dev = match cli.endpoints.as_slice() {
        [] => saved.endpoint == DEFAULT_ENDPOINT,
        list => list.iter().all(ours),
    };
    if !to_dev {
        return Ok(None);
    }
    let operator = matches!(
        cli.command,
        Command::Event(EventCommand::Create(_)) | Command::Bench(_) | Command::Holds { .. }
    ) || matches!(cli.command, Command::Login { operator: true, .. });
    Ok(Some(if operator {
        saved.operator
    } else {
        saved.buyer
    }))
}

/// `seatctl login --dev`: prints the line that puts the dev token in the shell.
fn login(cli: &Cli, operator: bool) -> ExitCode {
    match seatd_wire::dev::DevTokensFile::read(&cli.dev_dir) {
        Ok(Some(saved)) => {
            let token = if operator {
                saved.operator
            } else {
                saved.buyer
            };
            println!("export SEATD_TOKEN={token}");
            ExitCode::SUCCESS
        }
        Ok(None) => fail(
            cli,
            &Error::Invalid(format!(
                "no tokens in {}: is `seatd dev` running there (see --dev-dir)?",
                cli.dev_dir.display()
            )),
        ),
        Err(e) => fail(cli, &Error::Invalid(e)),
    }
}
