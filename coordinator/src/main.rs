//! `seatd`: the seat coordinator's command line (see `coordinator::cli`).

use std::process::ExitCode;

// Many small, short-lived allocations per command: mimalloc handles them far better
// than the system allocator (see raft-store's apply benchmark).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    coordinator::cli::main()
}
