//! `starling-sim`: `starling sim` with each node's peak memory measured.
//!
//! The same runs (same seeds, same traces) as `starling sim`, with
//! [`starling_sim::memory::Metered`] as the allocator, so that each run
//! reports the most heap each node's code and each node's simulated disk
//! held. Kept out of the `starling` binary: the allocator puts a header on
//! every block.

use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: starling_sim::memory::Metered = starling_sim::memory::Metered;

/// Runs simulation scenarios and measures each node's memory.
#[derive(Parser)]
#[command(name = "starling-sim", version)]
struct Cli {
    #[command(flatten)]
    args: starling_sim::cli::SimArgs,
}

fn main() -> ExitCode {
    match starling_sim::cli::main(Cli::parse().args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("starling-sim: some seeds failed (see above for how to reproduce each)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("starling-sim: {e}");
            ExitCode::from(2)
        }
    }
}
