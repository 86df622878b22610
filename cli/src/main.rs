//! `millpond`: the command-line tool of the millpond storage engine, thin
//! over the library. Each command lives in its own module:
//!
//! - `stats`, `verify` (`stats.rs`): what a store holds; a full consistency
//!   check, with `--repair`.
//! - `get`, `set`, `del`, `scan` (`kv.rs`): keys and values, shown as text
//!   with `\xNN` escapes (or hex with `--hex`), `--json` for scripts.
//! - `dump`, `load` (`dump.rs`): a versioned, streaming export format.
//! - `demo` (`demo.rs`): the README's main job.
//! - `bench` (`bench/`): the side-by-side benchmark driver.
//!
//! A missing directory is refused, never created, except by `set`, `load`
//! and `demo`. Errors are one line on stderr, and a non-zero exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod dump;
mod kv;
mod stats;
mod store;

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
    /// Counts and sizes: keys, inline and blob values, metadata and blob
    /// trees, keys with a TTL, the soonest deadline, the format version.
    Stats(stats::StatsArgs),
    /// Full consistency check: records and checksums, blobs against their
    /// records, orphan blobs, the deadline index, expired entries, the
    /// format version. Exit code 0 only when clean.
    Verify(stats::VerifyArgs),
    /// Prints the value of a key (exit code 1 if it has none).
    Get(kv::GetArgs),
    /// Sets a key, optionally with a time to live; creates the store if
    /// needed.
    Set(kv::SetArgs),
    /// Deletes a key (exit code 1 if it had no value).
    Del(kv::DelArgs),
    /// Lists keys and values in key order.
    Scan(kv::ScanArgs),
    /// Writes every live key, value and deadline to stdout in the dump
    /// format.
    Dump(dump::DumpArgs),
    /// Reads a dump from stdin into a store (created if needed).
    Load(dump::LoadArgs),
    /// Runs the demo workload (session state from several threads),
    /// checkpoints, shuts down, reopens, verifies and prints a summary.
    Demo(demo::DemoArgs),
    /// Runs workloads against millpond, raw sled, fjall, redb and an
    /// in-memory map, each in a fresh child process, and prints one
    /// comparison table; or, with --soak, a long run with a stall watchdog.
    Bench(bench::BenchArgs),
    /// One (workload, target) run; prints its results as one JSON line.
    /// Started by `bench`, not meant to be run by hand.
    #[command(hide = true)]
    BenchChild(bench::ChildArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Stats(args) => stats::stats(args),
        Command::Verify(args) => stats::verify(args),
        Command::Get(args) => kv::get(args),
        Command::Set(args) => kv::set(args),
        Command::Del(args) => kv::del(args),
        Command::Scan(args) => kv::scan(args),
        Command::Dump(args) => dump::dump(args),
        Command::Load(args) => dump::load(args),
        Command::Demo(args) => demo::demo(args),
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
