//! The seatd command line, exactly as `seatd` runs it, for the fault-injection suite.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    coordinator::cli::main()
}
