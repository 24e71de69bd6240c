//! Long fault-injection runs: `seatd-jepsen --fault kill-leader --nodes 5 --secs 600`.
//!
//! Prints the summary (operations by outcome, faults injected, each check's verdict)
//! and exits 1 on any violation, keeping the history. `SEATD_JEPSEN_SEED` (or
//! `--seed`) replays a run's schedule and workload.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use seatd_jepsen::run::{run, Fault, Scenario};

#[derive(Parser)]
#[command(
    name = "seatd-jepsen",
    about = "Fault-injection runs against a real seatd cluster"
)]
struct Args {
    /// isolate-leader, halves, bridge, ring, slow-links, kill-leader, pause, wipe,
    /// clock-skew, or all (one run each).
    #[arg(long, default_value = "all")]
    fault: String,
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    #[arg(long, default_value_t = 40)]
    clients: u32,
    /// Length of each run's workload.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    #[arg(long, env = "SEATD_JEPSEN_SEED")]
    seed: Option<u64>,
    /// Where failed runs keep their history.
    #[arg(long, default_value = "jepsen-results")]
    keep_dir: std::path::PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let faults: Vec<Fault> = if args.fault == "all" {
        Fault::ALL.to_vec()
    } else {
        match Fault::parse(&args.fault) {
            Some(f) => vec![f],
            None => {
                eprintln!("seatd-jepsen: unknown fault {:?}", args.fault);
                return ExitCode::from(2);
            }
        }
    };
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("seatd-jepsen: {e}");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    for fault in faults {
        let s = Scenario {
            fault,
            seed,
            nodes: args.nodes.max(fault.nodes_min()),
            clients: args.clients,
            duration: Duration::from_secs(args.secs),
            keep_dir: args.keep_dir.clone(),
        };
        match rt.block_on(run(&s)) {
            Ok(outcome) => {
                println!("{}", outcome.summary(&s));
                failed |= !outcome.report.is_valid();
            }
            Err(e) => {
                println!("scenario {} (seed {seed}) could not run: {e}", fault.name());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
