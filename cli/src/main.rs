//! `millpond`: the command-line tool of the millpond storage engine.
//!
//! For now it has one command, `bench`, the side-by-side benchmark driver
//! (millpond against raw sled and an in-memory upper bound). Each command
//! lives in its own module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;

#[derive(Parser)]
#[command(
    name = "millpond",
    version,
    about = "The millpond storage engine's command-line tool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs workloads against millpond, raw sled and an in-memory map, each
    /// in a fresh child process, and prints one comparison table.
    Bench(bench::BenchArgs),
    /// One (workload, target) run; prints its results as one JSON line.
    /// Started by `bench`, not meant to be run by hand.
    #[command(hide = true)]
    BenchChild(bench::ChildArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::BenchChild(args) => bench::run_child(args),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("millpond: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
