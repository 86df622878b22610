//! `millpond`: the command-line tool of the millpond storage engine, thin
//! over the library. Each command lives in its own module:
//!
//! - `stats`, `verify` (`stats.rs`): what a store holds; a full consistency
//!   check, with `--repair`.
//! - `get`, `set`, `del`, `scan` (`kv.rs`): keys and values, shown as text
//!   with `\xNN` escapes (or hex with `--hex`), `--json` for scripts.
//! - `dump`, `load` (`dump.rs`): a versioned, streaming export format.
//! - `demo` (`demo.rs`): the README's main job.
//! - `bench` (`bench/`): the side-by-side benchmark driver (also
//!   `--soak` and `--journal-modes`).
//!
//! A missing directory is refused, never created, except by `set`, `load`
//! and `demo`. Errors are one line on stderr, and a non-zero exit code,
//! including a damaged store on which sled panics while opening (see
//! [`quiet_storage_panics`]).

use std::any::Any;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::path::{Component, Path};
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
    /// comparison table; or, with --soak, a long run with a stall watchdog;
    /// or, with --journal-modes, millpond's journal modes beside stores
    /// that sync every write.
    Bench(bench::BenchArgs),
    /// One (workload, target) run; prints its results as one JSON line.
    /// Started by `bench`, not meant to be run by hand.
    #[command(hide = true)]
    BenchChild(bench::ChildArgs),
    /// One run of `bench --journal-modes` (a side, a thread count); prints
    /// its results as one JSON line. Started by `bench`, not meant to be
    /// run by hand.
    #[command(hide = true)]
    BenchJournalChild(bench::journal_modes::ChildArgs),
    /// One side of `bench --backend postgres`; prints its results as one
    /// JSON line. Started by `bench`, not meant to be run by hand.
    #[command(hide = true)]
    BenchPgChild(bench::pg::ChildArgs),
}

fn main() -> ExitCode {
    quiet_storage_panics();
    let cli = Cli::parse();
    // A panic that reaches this far is reported as one line too (the hook
    // has already printed it, unless it was raised in sled's code).
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| run(cli.command)));
    match outcome {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("millpond: error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
        Err(panic) => {
            eprintln!(
                "millpond: error: internal error: {}",
                one_line(panic_message(&*panic))
            );
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
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
        Command::BenchJournalChild(args) => bench::journal_modes::run_child(args),
        Command::BenchPgChild(args) => bench::pg::run_child(args),
    }
}

/// sled 0.34 panics, instead of returning an error, on some damaged files
/// while opening a store; the library catches that panic and returns
/// `Error::Corrupt`, which is reported like any other error. Rust's default
/// panic hook would print the panic and a backtrace first, so this hook
/// stays silent for panics raised in sled's code on the main thread (where
/// the library opens the store) and leaves every other panic to the
/// default hook: a bug in millpond or in this tool, or a panic in one of
/// sled's own threads, is still shown in full.
fn quiet_storage_panics() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
        let on_main = std::thread::current().name() == Some("main");
        let in_sled = info
            .location()
            .is_some_and(|at| is_sled_source(Path::new(at.file())));
        if !(on_main && in_sled) {
            default(info);
        }
    }));
}

/// Whether `file` (a panic location) is a source file of the sled crate:
/// under `sled-<version>/src/` (the cargo registry) or `sled/src/` (a
/// vendored copy). millpond's own `src/storage/sled.rs` is not.
fn is_sled_source(file: &Path) -> bool {
    let parts: Vec<&str> = file
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect();
    parts.windows(2).any(|pair| {
        let crate_dir = pair[0] == "sled"
            || pair[0]
                .strip_prefix("sled-")
                .is_some_and(|version| version.starts_with(|c: char| c.is_ascii_digit()));
        crate_dir && pair[1] == "src"
    })
}

/// The message a panic was raised with.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "a panic without a message"
    }
}

/// `text` on one line: its lines, trimmed, joined with "; " (an error may
/// carry a multi-line message from a lower layer, such as an assertion's).
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_sources_are_told_from_others() {
        for sled in [
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sled-0.34.7/src/pagecache/iterator.rs",
            "vendor/sled/src/tree.rs",
            r"C:\Users\x\.cargo\registry\src\index\sled-0.34.7\src\db.rs",
        ] {
            let path = sled.replace('\\', std::path::MAIN_SEPARATOR_STR);
            assert!(is_sled_source(Path::new(&path)), "{sled}");
        }
        for other in [
            "src/storage/sled.rs",
            "/work/millpond/src/storage/sled.rs",
            "cli/src/main.rs",
            "/home/me/sled-notes/millpond/cli/src/main.rs",
            "/root/.cargo/registry/src/index/sledgehammer-1.0.0/src/lib.rs",
        ] {
            assert!(!is_sled_source(Path::new(other)), "{other}");
        }
    }

    #[test]
    fn errors_are_printed_on_one_line() {
        assert_eq!(
            one_line("corrupt data: assertion failed\n  left: 0\n right: 1\n"),
            "corrupt data: assertion failed; left: 0; right: 1"
        );
        assert_eq!(one_line("plain"), "plain");
    }
}
