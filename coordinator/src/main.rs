//! `seatd`: the seat coordinator's command line.
//!
//! Today it carries the venue tools (`seatd layout ...`); the replica (`seatd node`),
//! the gateway (`seatd frontend`) and the one-process local cluster (`seatd dev`) are
//! added here as they are built. Every subcommand prints its result on stdout and
//! exits non-zero with a one-line reason on stderr when it cannot do its job.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use raft_store::layout::{generate, preset};
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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
