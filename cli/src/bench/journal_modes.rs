//! `millpond bench --journal-modes`: what millpond's write-ahead journal
//! costs a `set` in each mode, beside the peers that give every write
//! `Journal::Power`'s guarantee (it survives a power cut once the call has
//! returned).
//!
//! The sides ([`Side`]):
//! - millpond with `Journal::Off`, `Periodic(100ms)`, `Process` and `Power`:
//!   a plain `set`;
//! - sled: `insert`, then `flush()` (its log written and fsynced) per write;
//! - redb: one write transaction per write, committed with
//!   `Durability::Immediate`;
//! - fjall: `insert`, then `persist(PersistMode::SyncAll)` per write.
//!
//! For each thread count (1, 4 and 16 by default), each side runs in a
//! fresh child process (`bench-journal-child`, hidden), as the workloads do:
//! it opens a new store, writes every key of the keyspace once with the
//! store's plain writes (untimed; 100,000 keys of 16 bytes, 100-byte
//! values) and closes it; reopens it the way the side writes; then N
//! threads `set` keys of their own share of the keyspace, chosen uniformly,
//! each call timed, for a fixed time (4 s times `--scale`; the per-write
//! fsyncs make an op count unworkable); then the store is closed (its
//! durable point), reopened, and every key compared with the last value
//! written to it. Every value carries its key's version, so no write
//! repeats the value before it. The child prints one JSON line (a
//! [`RunReport`]); the parent prints ops/s and p99 per side and thread
//! count, the ratios the goals name, and a table of details.

use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use std::{env, fs};

use anyhow::{anyhow, bail, Context, Result};
use millpond::Journal;
use serde::{Deserialize, Serialize};

use super::measure::{disk_usage, filesystem_type, is_memory_filesystem, peak_rss_bytes};
use super::measure::{IoCounters, Latencies};
use super::report::{fmt_bytes, fmt_count, fmt_ns, fmt_ratio, RunReport, Status, Table};
use super::targets::{show_key, FjallTarget, MillpondTarget, RedbTarget, SledTarget};
use super::targets::{Target, TargetKind, Tuning};
use super::workloads::{fill, hash3, Checker, Rng};
use super::{check_options, child_report, progress_bar, remove_dir, selection, RunOptions};

/// The `workload` of these runs' reports.
pub const WORKLOAD: &str = "journal-modes";
/// The thread counts unless `--threads` says otherwise.
pub const THREADS: [usize; 3] = [1, 4, 16];
/// The keyspace unless `--keys` says otherwise.
pub const KEYS: u64 = 100_000;
/// The time of one run at `--scale 1`.
pub const RUN_TIME: Duration = Duration::from_secs(4);
/// The interval of the `Periodic` side (the issue's `Periodic(100 ms)`).
pub const PERIODIC: Duration = Duration::from_millis(100);
/// Bytes per key.
pub const KEY_BYTES: usize = 16;
/// Bytes per value.
pub const VALUE_BYTES: usize = 100;
const MAX_THREADS: usize = 256;
/// Keys are numbered with 12 decimal digits, and every key's version is
/// kept in memory.
const MAX_KEYS: u64 = 100_000_000;

/// One side of the comparison: a store and how it makes a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "kebab-case")]
pub enum Side {
    /// millpond, `Journal::Off`: a write is in memory until a flush cycle.
    Off,
    /// millpond, `Journal::Periodic(100ms)`.
    Periodic,
    /// millpond, `Journal::Process`: each write handed to the OS.
    Process,
    /// millpond, `Journal::Power`: each write fdatasynced.
    Power,
    /// sled: `insert`, then `flush()`, per write.
    SledFlush,
    /// redb: one `Durability::Immediate` commit per write.
    RedbImmediate,
    /// fjall: `insert`, then `persist(PersistMode::SyncAll)`, per write.
    FjallSyncAll,
}

impl Side {
    pub const ALL: [Side; 7] = [
        Side::Off,
        Side::Periodic,
        Side::Process,
        Side::Power,
        Side::SledFlush,
        Side::RedbImmediate,
        Side::FjallSyncAll,
    ];

    /// As on the command line (`bench-journal-child --side`).
    pub fn name(self) -> &'static str {
        match self {
            Side::Off => "off",
            Side::Periodic => "periodic",
            Side::Process => "process",
            Side::Power => "power",
            Side::SledFlush => "sled-flush",
            Side::RedbImmediate => "redb-immediate",
            Side::FjallSyncAll => "fjall-sync-all",
        }
    }

    /// As in the tables (and the reports' `target`).
    pub fn label(self) -> &'static str {
        match self {
            Side::Off => "millpond Off",
            Side::Periodic => "millpond Periodic(100ms)",
            Side::Process => "millpond Process",
            Side::Power => "millpond Power",
            Side::SledFlush => "sled insert+flush()",
            Side::RedbImmediate => "redb Immediate commit",
            Side::FjallSyncAll => "fjall insert+persist(SyncAll)",
        }
    }

    /// The store (for `--target`).
    pub fn target(self) -> TargetKind {
        match self {
            Side::Off | Side::Periodic | Side::Process | Side::Power => TargetKind::Millpond,
            Side::SledFlush => TargetKind::Sled,
            Side::RedbImmediate => TargetKind::Redb,
            Side::FjallSyncAll => TargetKind::Fjall,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

// ---------------------------------------------------------------------------
// The parent

/// What `bench --journal-modes` was asked for.
pub struct Plan {
    /// `--target` (empty: every store).
    pub targets: Vec<TargetKind>,
    /// `--threads` (empty: [`THREADS`]).
    pub threads: Vec<usize>,
    /// `--keys` (`None`: [`KEYS`]).
    pub keys: Option<u64>,
    /// The run's directory (made by the caller); each run's store is made
    /// inside.
    pub root: PathBuf,
    pub keep: bool,
    pub json: bool,
    pub options: RunOptions,
}

/// Everything `bench --journal-modes --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalOutput {
    pub command: String,
    pub seed: u64,
    pub keys: u64,
    pub key_bytes: usize,
    pub value_bytes: usize,
    /// The time bound of each run's timed phase.
    pub run_secs: f64,
    pub threads: Vec<usize>,
    /// Where the stores were made.
    pub dir: String,
    /// That directory's filesystem type, if it could be told.
    pub filesystem: Option<String>,
    pub write_delay_ms: u64,
    pub flush_threads: usize,
    pub wall_secs: f64,
    pub runs: Vec<RunReport>,
}

fn check_threads(threads: &[usize]) -> Result<()> {
    if let Some(&n) = threads.iter().find(|&&n| n == 0 || n > MAX_THREADS) {
        bail!("--threads takes counts from 1 to {MAX_THREADS}, not {n}");
    }
    Ok(())
}

fn check_keys(keys: u64, threads: usize) -> Result<()> {
    if keys < threads as u64 || keys > MAX_KEYS {
        bail!(
            "--keys must be at least the largest thread count ({threads}: every thread writes \
             keys of its own) and at most {}, not {keys}",
            fmt_count(MAX_KEYS)
        );
    }
    Ok(())
}

/// The time bound of one run: [`RUN_TIME`] times `scale`, at least 1 ms.
fn run_time(scale: f64) -> Duration {
    Duration::from_millis(((RUN_TIME.as_secs_f64() * scale * 1e3).round() as u64).max(1))
}

/// Runs every (thread count, side) pair in a child, then prints.
pub fn run(plan: &Plan) -> Result<ExitCode> {
    check_options(&plan.options)?;
    let threads = selection(&plan.threads, &THREADS);
    check_threads(&threads)?;
    let keys = plan.keys.unwrap_or(KEYS);
    check_keys(keys, threads.iter().copied().max().unwrap_or(1))?;
    if plan.targets.contains(&TargetKind::InMemory) {
        bail!(
            "the in-memory map makes no write durable: --journal-modes compares millpond, sled, \
             redb and fjall"
        );
    }
    let targets = selection(&plan.targets, &TargetKind::ALL);
    let sides: Vec<Side> = Side::ALL
        .into_iter()
        .filter(|s| targets.contains(&s.target()))
        .collect();
    let run_for = run_time(plan.options.scale);
    let filesystem = filesystem_type(&plan.root);
    eprintln!(
        "millpond bench --journal-modes: stores in {} ({})",
        plan.root.display(),
        filesystem.as_deref().unwrap_or("filesystem type unknown")
    );
    if let Some(warning) = memory_warning(filesystem.as_deref()) {
        eprintln!("{warning}");
    }
    let exe = env::current_exe().context("finding this program's path to start child runs")?;

    let bar = progress_bar(threads.len() * sides.len());
    let started = Instant::now();
    let mut runs = Vec::new();
    // Thread count outermost: the runs compared with each other are made
    // close together in time.
    for &n in &threads {
        for &side in &sides {
            bar.set_message(format!("{side}, {n} thread(s)"));
            let dir = plan.root.join(format!("{}-{n}", side.name()));
            let report = run_in_child(&exe, side, n, keys, run_for, &dir, &plan.options);
            bar.println(summary_line(&report));
            runs.push(report);
            bar.inc(1);
            if !plan.keep {
                remove_dir(&dir)?;
            }
        }
    }
    bar.finish_and_clear();

    let out = JournalOutput {
        command: env::args().collect::<Vec<_>>().join(" "),
        seed: plan.options.seed,
        keys,
        key_bytes: KEY_BYTES,
        value_bytes: VALUE_BYTES,
        run_secs: run_for.as_secs_f64(),
        threads,
        dir: plan.root.display().to_string(),
        filesystem,
        write_delay_ms: plan.options.write_delay_ms,
        flush_threads: plan.options.flush_threads,
        wall_secs: started.elapsed().as_secs_f64(),
        runs,
    };
    if plan.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&out));
    }
    let failed = out
        .runs
        .iter()
        .filter(|r| r.status == Status::Failed)
        .count();
    if failed > 0 {
        eprintln!("millpond bench --journal-modes: {failed} run(s) FAILED");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A warning when the stores are on a filesystem in memory, where an fsync
/// reaches no device.
fn memory_warning(filesystem: Option<&str>) -> Option<String> {
    filesystem.filter(|k| is_memory_filesystem(k)).map(|k| {
        format!(
            "WARNING: the stores are on {k}, in memory: fsync reaches no device there, so the \
             per-write sync figures mean nothing (use --dir on a disk)"
        )
    })
}

fn summary_line(r: &RunReport) -> String {
    let head = format!("{}, {} thread(s)", r.target, r.threads);
    match r.status {
        Status::Ok => format!(
            "{head}: {} ops/s, p99 {}, {} sets, {} keys checked",
            fmt_count(r.ops_per_sec.round() as u64),
            fmt_ns(r.p99_ns),
            fmt_count(r.ops),
            fmt_count(r.verified_keys)
        ),
        Status::Failed | Status::NotRun => {
            format!("{head}: FAILED: {}", r.error.as_deref().unwrap_or("failed"))
        }
    }
}

fn run_in_child(
    exe: &Path,
    side: Side,
    threads: usize,
    keys: u64,
    run_for: Duration,
    dir: &Path,
    options: &RunOptions,
) -> RunReport {
    let run_ms = u64::try_from(run_for.as_millis()).unwrap_or(u64::MAX);
    let mut args: Vec<OsString> = vec!["bench-journal-child".into(), "--side".into()];
    args.push(side.name().into());
    for (flag, value) in [
        ("--threads", threads.to_string()),
        ("--keys", keys.to_string()),
        ("--run-ms", run_ms.to_string()),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    args.push("--dir".into());
    args.push(dir.into());
    args.extend(options.as_args().into_iter().map(OsString::from));
    child_report(exe, &args, |error| RunReport {
        threads,
        status: Status::Failed,
        error: Some(error),
        ..report_of(side)
    })
}

/// An empty report of a run of `side`.
fn report_of(side: Side) -> RunReport {
    RunReport {
        workload: WORKLOAD.into(),
        target: side.label().into(),
        ..RunReport::default()
    }
}

// ---------------------------------------------------------------------------
// The child

/// `millpond bench-journal-child`: one run, one JSON line.
#[derive(clap::Args, Debug)]
pub struct ChildArgs {
    #[arg(long, value_enum)]
    pub side: Side,
    #[arg(long)]
    pub threads: usize,
    #[arg(long)]
    pub keys: u64,
    /// The time bound of the timed phase, in milliseconds.
    #[arg(long)]
    pub run_ms: u64,
    /// The store's directory (must not exist or be empty).
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub options: RunOptions,
}

/// The child: one run, one JSON line on stdout; exit status 2 when the run
/// failed (including a wrong final state).
pub fn run_child(args: ChildArgs) -> Result<ExitCode> {
    check_options(&args.options)?;
    check_threads(&[args.threads])?;
    check_keys(args.keys, args.threads)?;
    let shape = Shape {
        seed: args.options.seed,
        keys: args.keys,
        threads: args.threads,
        run_for: Duration::from_millis(args.run_ms.max(1)),
    };
    let tuning = args.options.tuning();
    let (side, dir) = (args.side, args.dir.as_path());
    let millpond = |mode: Journal| {
        let open = move |d: &Path, t: &Tuning| MillpondTarget::open_journaled(d, t, mode);
        measure(
            side,
            &shape,
            dir,
            &tuning,
            open,
            |t: &MillpondTarget, k, v| t.set(k, v),
        )
    };
    let report = match side {
        Side::Off => millpond(Journal::Off),
        Side::Periodic => millpond(Journal::Periodic(PERIODIC)),
        Side::Process => millpond(Journal::Process),
        Side::Power => millpond(Journal::Power),
        Side::SledFlush => measure(side, &shape, dir, &tuning, SledTarget::open, |t, k, v| {
            t.set(k, v)?;
            t.sync()
        }),
        Side::RedbImmediate => measure(
            side,
            &shape,
            dir,
            &tuning,
            RedbTarget::open,
            RedbTarget::set_durable,
        ),
        Side::FjallSyncAll => measure(side, &shape, dir, &tuning, FjallTarget::open, |t, k, v| {
            t.set(k, v)?;
            t.sync()
        }),
    };
    let what = format!(
        "bench-journal-child: {} with {} thread(s)",
        report.target, report.threads
    );
    super::finish_child(&report, &what)
}

/// What a run writes: keys `0..keys`, thread `th` of `threads` owning keys
/// `th`, `th + threads`, ...; the value of key `i` at version `v` depends
/// only on the seed, `i` and `v` (version 0: the preloaded value).
#[derive(Debug, Clone)]
struct Shape {
    seed: u64,
    keys: u64,
    threads: usize,
    run_for: Duration,
}

impl Shape {
    /// `key:` and `i` in 12 decimal digits: 16 bytes.
    fn key(i: u64) -> [u8; KEY_BYTES] {
        let mut k = *b"key:000000000000";
        let mut n = i;
        for digit in k[4..].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
        k
    }

    fn value(&self, i: u64, version: u32, buf: &mut [u8; VALUE_BYTES]) {
        fill(buf, hash3(self.seed, 60 + u64::from(version), i));
        buf[..4].copy_from_slice(&version.to_le_bytes());
        buf[4..12].copy_from_slice(&i.to_le_bytes());
    }

    /// How many keys thread `th` owns (at least one: `keys >= threads`).
    fn owned(&self, th: usize) -> u64 {
        (self.keys - th as u64).div_ceil(self.threads as u64)
    }

    fn describe(&self) -> String {
        format!(
            "set of {VALUE_BYTES} B values to {} preloaded keys of {KEY_BYTES} B (each thread its \
             own share, uniform), {:.1} s",
            fmt_count(self.keys),
            self.run_for.as_secs_f64()
        )
    }
}

/// One run of `side`: `open` opens the store the way the side writes,
/// `write` is one of its writes. Never fails: a failure is in the report.
fn measure<T: Target>(
    side: Side,
    shape: &Shape,
    dir: &Path,
    tuning: &Tuning,
    open: impl Fn(&Path, &Tuning) -> Result<T>,
    write: impl Fn(&T, &[u8], &[u8]) -> Result<()> + Sync,
) -> RunReport {
    let mut report = RunReport {
        description: shape.describe(),
        threads: shape.threads,
        ..report_of(side)
    };
    if let Err(e) = measured_run(shape, dir, tuning, &open, &write, &mut report) {
        report.status = Status::Failed;
        report.error = Some(format!("{e:#}"));
    }
    report
}

fn measured_run<T: Target>(
    shape: &Shape,
    dir: &Path,
    tuning: &Tuning,
    open: &impl Fn(&Path, &Tuning) -> Result<T>,
    write: &(impl Fn(&T, &[u8], &[u8]) -> Result<()> + Sync),
    report: &mut RunReport,
) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Untimed: every key once, with the store's plain writes (no sync per
    // write), then its durable point.
    let t = T::open(dir, tuning).context("opening the store to preload it")?;
    let mut value = [0; VALUE_BYTES];
    for i in 0..shape.keys {
        shape.value(i, 0, &mut value);
        t.set(&Shape::key(i), &value).context("preloading")?;
    }
    t.close().context("the durable point after preloading")?;

    let t = open(dir, tuning).context("reopening the store for the timed phase")?;
    let io_before = IoCounters::read()?;
    let started = Instant::now();
    let outcome = timed(&t, shape, write);
    let ops_done = Instant::now();
    let outcome = outcome.context("the timed phase")?;
    let closed = t
        .close()
        .context("the durable point ending the timed phase")?;
    let ended = Instant::now();
    let io_after = IoCounters::read()?;
    report.peak_rss_bytes = peak_rss_bytes()?;

    let Timed {
        ops,
        mut latencies,
        versions,
    } = outcome;
    report.ops = ops;
    report.logical_bytes = ops * (KEY_BYTES + VALUE_BYTES) as u64;
    report.ops_secs = (ops_done - started).as_secs_f64();
    report.durable_secs = (ended - ops_done).as_secs_f64();
    report.total_secs = (ended - started).as_secs_f64();
    report.ops_per_sec = ops as f64 / report.total_secs;
    report.mean_ns = latencies.mean();
    report.p50_ns = latencies.quantile(0.50);
    report.p99_ns = latencies.quantile(0.99);
    report.p999_ns = latencies.quantile(0.999);
    report.max_ns = latencies.max();
    report.write_bytes = io_after.write_bytes - io_before.write_bytes;
    report.cancelled_write_bytes = io_after.cancelled_write_bytes - io_before.cancelled_write_bytes;
    report.disk_bytes = disk_usage(dir).with_context(|| format!("measuring {}", dir.display()))?;
    report.engine = closed.engine;
    let touched = versions.iter().filter(|&&v| v > 0).count();
    report.notes.push(format!(
        "{} of {} keys written in the timed phase",
        fmt_count(touched as u64),
        fmt_count(shape.keys)
    ));

    let verify_started = Instant::now();
    let t = open(dir, tuning).context("reopening the store to check it")?;
    let checked = verify(&t, shape, &versions);
    t.close().context("closing the store after checking it")?;
    report.verified_keys = checked?;
    report.verify_secs = verify_started.elapsed().as_secs_f64();
    Ok(())
}

/// What the timed phase did.
struct Timed {
    ops: u64,
    latencies: Latencies,
    /// The version each key holds now (0: the preloaded value).
    versions: Vec<u32>,
}

/// The timed phase: `shape.threads` writers until `shape.run_for` has
/// passed (each ends with the write it is in; each makes one at least).
fn timed<T: Target>(
    t: &T,
    shape: &Shape,
    write: &(impl Fn(&T, &[u8], &[u8]) -> Result<()> + Sync),
) -> Result<Timed> {
    let deadline = Instant::now() + shape.run_for;
    let per_thread = std::thread::scope(|s| {
        let handles: Vec<_> = (0..shape.threads)
            .map(|th| s.spawn(move || writer(t, shape, write, th, deadline)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a writer thread panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    let mut out = Timed {
        ops: 0,
        latencies: Latencies::default(),
        versions: vec![0; usize::try_from(shape.keys).context("too many keys")?],
    };
    for (th, (latencies, mine)) in per_thread.into_iter().enumerate() {
        out.ops += latencies.len() as u64;
        out.latencies.merge(latencies);
        for (j, version) in mine.into_iter().enumerate() {
            out.versions[th + j * shape.threads] = version;
        }
    }
    Ok(out)
}

/// One writer: uniform over its own keys, each write a new version.
/// Returns its latencies and the versions of its keys.
fn writer<T: Target>(
    t: &T,
    shape: &Shape,
    write: &impl Fn(&T, &[u8], &[u8]) -> Result<()>,
    th: usize,
    deadline: Instant,
) -> Result<(Latencies, Vec<u32>)> {
    let owned = shape.owned(th);
    let mut versions = vec![0u32; usize::try_from(owned).context("too many keys")?];
    let mut rng = Rng::new(hash3(shape.seed, 61, th as u64));
    let mut latencies = Latencies::with_capacity(1 << 16);
    let mut value = [0; VALUE_BYTES];
    loop {
        let j = rng.below(owned) as usize;
        let i = th as u64 + j as u64 * shape.threads as u64;
        let version = versions[j] + 1;
        shape.value(i, version, &mut value);
        let key = Shape::key(i);
        let started = Instant::now();
        write(t, &key, &value).with_context(|| format!("writing key {}", show_key(&key)))?;
        let done = Instant::now();
        versions[j] = version;
        let nanos = (done - started).as_nanos();
        latencies.record_nanos(u32::try_from(nanos).unwrap_or(u32::MAX));
        if done >= deadline {
            return Ok((latencies, versions));
        }
    }
}

/// Every key against the last value written to it.
fn verify<T: Target>(t: &T, shape: &Shape, versions: &[u32]) -> Result<u64> {
    let mut checker = Checker::default();
    let mut want = [0; VALUE_BYTES];
    for (i, &version) in (0u64..).zip(versions) {
        shape.value(i, version, &mut want);
        checker.check_get(t, &Shape::key(i), Some(&want))?;
    }
    checker.finish()
}

// ---------------------------------------------------------------------------
// The tables

/// A ratio of throughputs the issue sets a goal for.
struct Goal {
    name: &'static str,
    mine: Side,
    theirs: Side,
    goal: &'static str,
    /// The thread count the goal is at (`None`: every one).
    at: Option<usize>,
    /// Met when the ratio is at least this (`strict`: above it).
    bound: f64,
    strict: bool,
}

const GOALS: [Goal; 4] = [
    Goal {
        name: "Process / Off",
        mine: Side::Process,
        theirs: Side::Off,
        goal: ">= 0.5x at each count",
        at: None,
        bound: 0.5,
        strict: false,
    },
    Goal {
        name: "Power / sled insert+flush()",
        mine: Side::Power,
        theirs: Side::SledFlush,
        goal: ">= 20x at 16 threads",
        at: Some(16),
        bound: 20.0,
        strict: false,
    },
    Goal {
        name: "Power / redb Immediate commit",
        mine: Side::Power,
        theirs: Side::RedbImmediate,
        goal: "> 1x at 16 threads",
        at: Some(16),
        bound: 1.0,
        strict: true,
    },
    Goal {
        name: "Power / fjall insert+persist(SyncAll)",
        mine: Side::Power,
        theirs: Side::FjallSyncAll,
        goal: "> 1x at 16 threads",
        at: Some(16),
        bound: 1.0,
        strict: true,
    },
];

impl Goal {
    fn met(&self, ratio: f64) -> bool {
        if self.strict {
            ratio > self.bound
        } else {
            ratio >= self.bound
        }
    }
}

/// The run of `side` with `threads` threads, if it has one.
fn find<'a>(runs: &'a [RunReport], side: &str, threads: usize) -> Option<&'a RunReport> {
    runs.iter()
        .find(|r| r.target == side && r.threads == threads)
}

/// Throughput of `mine` / `theirs` at `threads`, where both ran.
fn ratio(runs: &[RunReport], mine: Side, theirs: Side, threads: usize) -> Option<f64> {
    let ok = |s: Side| find(runs, s.label(), threads).filter(|r| r.status == Status::Ok);
    let (m, t) = (ok(mine)?, ok(theirs)?);
    (t.ops_per_sec > 0.0).then(|| m.ops_per_sec / t.ops_per_sec)
}

/// The tables and notes printed by `bench --journal-modes`.
pub fn render(out: &JournalOutput) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "journal modes: set of {} B values to {} preloaded keys of {} B (each thread its own \
         share, uniform), {:.1} s per run, each run in its own process",
        out.value_bytes,
        fmt_count(out.keys),
        out.key_bytes,
        out.run_secs
    );
    let _ = writeln!(
        text,
        "stores in {} ({})",
        out.dir,
        out.filesystem
            .as_deref()
            .unwrap_or("filesystem type unknown")
    );
    if let Some(warning) = memory_warning(out.filesystem.as_deref()) {
        let _ = writeln!(text, "{warning}");
    }

    // The sides in the order they ran.
    let mut sides: Vec<&str> = Vec::new();
    for r in &out.runs {
        if !sides.contains(&r.target.as_str()) {
            sides.push(&r.target);
        }
    }

    // ops/s and p99 per side and thread count.
    let mut columns: Vec<(String, bool)> = vec![("side".into(), false)];
    for n in &out.threads {
        columns.push((format!("ops/s @{n}"), true));
        columns.push((format!("p99 @{n}"), true));
    }
    let columns: Vec<(&str, bool)> = columns.iter().map(|(h, r)| (h.as_str(), *r)).collect();
    let mut main = Table::new(&columns);
    for side in &sides {
        let mut cells = vec![side.to_string()];
        for &n in &out.threads {
            match find(&out.runs, side, n) {
                Some(r) if r.status == Status::Ok => {
                    cells.push(fmt_count(r.ops_per_sec.round() as u64));
                    cells.push(fmt_ns(r.p99_ns));
                }
                Some(_) => cells.extend(["FAILED".to_string(), String::new()]),
                None => cells.extend(["-".to_string(), "-".to_string()]),
            }
        }
        main.row(cells);
    }
    text.push('\n');
    text.push_str(&main.render());

    // The goals.
    let mut columns: Vec<(String, bool)> = vec![("throughput ratio".into(), false)];
    columns.extend(out.threads.iter().map(|n| (format!("@{n}"), true)));
    columns.push(("goal".into(), false));
    columns.push(("met".into(), false));
    let columns: Vec<(&str, bool)> = columns.iter().map(|(h, r)| (h.as_str(), *r)).collect();
    let mut goals = Table::new(&columns);
    let ran = |s: Side| sides.contains(&s.label());
    for g in GOALS.iter().filter(|g| ran(g.mine) && ran(g.theirs)) {
        let ratios: Vec<Option<f64>> = out
            .threads
            .iter()
            .map(|&n| ratio(&out.runs, g.mine, g.theirs, n))
            .collect();
        let judged: Vec<f64> = match g.at {
            Some(at) => out
                .threads
                .iter()
                .zip(&ratios)
                .filter(|(n, _)| **n == at)
                .filter_map(|(_, r)| *r)
                .collect(),
            None => ratios.iter().flatten().copied().collect(),
        };
        let met = if judged.is_empty() {
            "-"
        } else if judged.iter().all(|&r| g.met(r)) {
            "yes"
        } else {
            "NO"
        };
        let mut cells = vec![g.name.to_string()];
        cells.extend(
            ratios
                .iter()
                .map(|r| r.map_or_else(|| "-".into(), fmt_ratio)),
        );
        cells.push(g.goal.into());
        cells.push(met.into());
        goals.row(cells);
    }
    if !goals.is_empty() {
        text.push_str("\nthroughput ratios at the same thread count (the issue's goals):\n");
        text.push_str(&goals.render());
    }

    // Every run in full.
    let mut details = Table::new(&[
        ("side", false),
        ("thr", true),
        ("sets", true),
        ("ops/s", true),
        ("mean", true),
        ("p50", true),
        ("p99", true),
        ("p99.9", true),
        ("max", true),
        ("durable s", true),
        ("dev B/set", true),
        ("disk", true),
        ("peak RSS", true),
        ("check", false),
    ]);
    for r in &out.runs {
        if r.status != Status::Ok && r.ops == 0 {
            let mut cells = vec![String::new(); 14];
            cells[0] = r.target.clone();
            cells[1] = r.threads.to_string();
            cells[13] = "FAILED (see below)".into();
            details.row(cells);
            continue;
        }
        details.row(vec![
            r.target.clone(),
            r.threads.to_string(),
            fmt_count(r.ops),
            fmt_count(r.ops_per_sec.round() as u64),
            fmt_ns(r.mean_ns),
            fmt_ns(r.p50_ns),
            fmt_ns(r.p99_ns),
            fmt_ns(r.p999_ns),
            fmt_ns(r.max_ns),
            format!("{:.2}", r.durable_secs),
            if r.ops > 0 {
                fmt_count((r.write_bytes as f64 / r.ops as f64).round() as u64)
            } else {
                "-".into()
            },
            fmt_bytes(r.disk_bytes),
            fmt_bytes(r.peak_rss_bytes),
            match r.status {
                Status::Ok => format!("ok ({} keys)", fmt_count(r.verified_keys)),
                _ => "FAILED (see below)".into(),
            },
        ]);
    }
    text.push_str("\nevery run:\n");
    text.push_str(&details.render());

    let _ = writeln!(
        text,
        "\nsettings: seed {}, write_delay {} ms (sled flush_every_ms {}), flush_threads {}; wall \
         time {:.1} s",
        out.seed, out.write_delay_ms, out.write_delay_ms, out.flush_threads, out.wall_secs
    );
    text.push_str(
        "columns: ops/s = sets / (timed phase + the durable point closing it: millpond \
         checkpoint + shutdown, sled flush, redb\n  a durable commit, fjall persist(SyncAll)); \
         latencies are per set call; dev B/set = /proc/self/io write_bytes over the\n  timed \
         phase and durable point / sets; check = the store reopened and every key compared with \
         the last value written to it.\n\
         guarantees: Power, sled, redb and fjall make each write durable before the call \
         returns; Process, safe from a crash of the\n  process on return; Periodic(100ms), \
         within about 100 ms; Off, within write_delay plus a flush cycle (a crash) or at the\n  \
         next checkpoint (a power cut). The check follows a clean close: it shows that no write \
         was lost or changed, not\n  that each was durable when its call returned.\n",
    );
    let failures: Vec<&RunReport> = out.runs.iter().filter(|r| r.status != Status::Ok).collect();
    if !failures.is_empty() {
        text.push_str("FAILURES:\n");
        for r in failures {
            let _ = writeln!(
                text,
                "  {} with {} thread(s): {}",
                r.target,
                r.threads,
                r.error.as_deref().unwrap_or("failed")
            );
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_16_bytes_and_every_key_has_one_owner() {
        assert_eq!(&Shape::key(0), b"key:000000000000");
        assert_eq!(&Shape::key(1_234_567), b"key:000001234567");
        assert_eq!(&Shape::key(MAX_KEYS - 1), b"key:000099999999");
        for (keys, threads) in [(100, 1), (100, 3), (17, 16), (16, 16)] {
            let shape = Shape {
                seed: 1,
                keys,
                threads,
                run_for: Duration::from_millis(1),
            };
            let owned: u64 = (0..threads).map(|th| shape.owned(th)).sum();
            assert_eq!(owned, keys, "{keys} keys, {threads} threads");
            assert!((0..threads).all(|th| shape.owned(th) >= 1));
        }
        let shape = Shape {
            seed: 1,
            keys: 10,
            threads: 1,
            run_for: Duration::from_millis(1),
        };
        let (mut a, mut b) = ([0; VALUE_BYTES], [0; VALUE_BYTES]);
        shape.value(3, 1, &mut a);
        shape.value(3, 2, &mut b);
        assert_ne!(a, b, "a new version is a new value");
        shape.value(3, 1, &mut b);
        assert_eq!(a, b);
    }

    fn tuning() -> Tuning {
        Tuning {
            write_delay: Duration::from_millis(50),
            max_dirty_bytes: Some(1 << 20),
            flush_threads: 1,
            inline_threshold: None,
            compression: None,
        }
    }

    #[test]
    fn a_run_checks_its_store_and_a_lost_write_fails_it() {
        let tmp = tempfile::Builder::new()
            .prefix("millpond-journal-modes-")
            .tempdir()
            .unwrap();
        let base = tmp.path();
        let shape = Shape {
            seed: 3,
            keys: 300,
            threads: 3,
            run_for: Duration::from_millis(50),
        };
        let open = |d: &Path, t: &Tuning| MillpondTarget::open(d, t);
        let r = measure(
            Side::Off,
            &shape,
            &base.join("good"),
            &tuning(),
            open,
            |t: &MillpondTarget, k, v| t.set(k, v),
        );
        assert_eq!(r.status, Status::Ok, "{:?}", r.error);
        assert_eq!(r.verified_keys, 300);
        assert_eq!(r.threads, 3);
        assert!(r.ops >= 3, "each thread makes one write at least");
        assert_eq!(r.target, "millpond Off");
        // A side that drops every 7th write looks fast, and fails.
        let n = std::sync::atomic::AtomicU64::new(0);
        let r = measure(
            Side::Power,
            &shape,
            &base.join("lossy"),
            &tuning(),
            open,
            |t: &MillpondTarget, k, v| {
                if n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .is_multiple_of(7)
                {
                    return Ok(());
                }
                t.set(k, v)
            },
        );
        assert_eq!(r.status, Status::Failed);
        let error = r.error.unwrap_or_default();
        assert!(error.contains("keys differ"), "{error}");
    }

    fn run(side: Side, threads: usize, ops_per_sec: f64) -> RunReport {
        RunReport {
            threads,
            ops: 1000,
            ops_per_sec,
            p99_ns: 2_500,
            verified_keys: 100,
            ..report_of(side)
        }
    }

    #[test]
    fn the_report_shows_each_side_the_goals_and_failures() {
        let mut runs = Vec::new();
        for (n, scale) in [(1, 1.0), (16, 10.0)] {
            runs.push(run(Side::Off, n, 1000.0 * scale));
            runs.push(run(Side::Process, n, 600.0 * scale));
            runs.push(run(Side::Power, n, 100.0 * scale));
            runs.push(run(Side::SledFlush, n, 10.0 * scale));
            runs.push(run(Side::RedbImmediate, n, 120.0 * scale));
        }
        // Process falls behind at 16 threads; fjall failed.
        runs[6].ops_per_sec = 4000.0;
        let mut failed = report_of(Side::FjallSyncAll);
        failed.threads = 16;
        failed.status = Status::Failed;
        failed.error = Some("verification failed: 1 of 100 keys differ".into());
        runs.push(failed);
        let out = JournalOutput {
            command: "millpond bench --journal-modes".into(),
            seed: 1,
            keys: 100,
            key_bytes: KEY_BYTES,
            value_bytes: VALUE_BYTES,
            run_secs: 0.5,
            threads: vec![1, 16],
            dir: "/tmp/x".into(),
            filesystem: Some("tmpfs".into()),
            write_delay_ms: 500,
            flush_threads: 2,
            wall_secs: 1.0,
            runs,
        };
        let text = render(&out);
        let words = |prefix: &str| -> Vec<String> {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        assert_eq!(
            words("millpond Power ")[2..],
            ["100", "2.5", "µs", "1,000", "2.5", "µs"]
        );
        assert_eq!(words("fjall insert")[2..], ["-", "-", "FAILED"]);
        let process = words("Process / Off");
        assert_eq!(process[3..5], ["0.60x", "0.40x"], "{text}");
        assert_eq!(process.last().map(String::as_str), Some("NO"));
        let sled = words("Power / sled");
        assert_eq!(sled[4..6], ["10.0x", "10.0x"], "{text}");
        assert_eq!(sled.last().map(String::as_str), Some("NO"));
        let redb = words("Power / redb");
        assert_eq!(redb[5..7], ["0.83x", "0.83x"], "{text}");
        assert_eq!(redb.last().map(String::as_str), Some("NO"));
        // fjall ran (and failed): its ratio has no figure, and no verdict.
        let fjall = words("Power / fjall");
        assert_eq!(fjall[4..6], ["-", "-"], "{text}");
        assert_eq!(fjall.last().map(String::as_str), Some("-"));
        assert!(text.contains("WARNING: the stores are on tmpfs"), "{text}");
        assert!(text.contains("ok (100 keys)"));
        assert!(text.contains("FAILURES:\n  fjall insert+persist(SyncAll) with 16 thread(s)"));
        // The goals are met when the figures are.
        let mut out = out;
        for r in &mut out.runs {
            if r.target == Side::Power.label() {
                r.ops_per_sec *= 3.0;
            }
            if r.target == Side::Process.label() && r.threads == 16 {
                r.ops_per_sec = 6000.0;
            }
        }
        let text = render(&out);
        for name in ["Process / Off", "Power / sled", "Power / redb"] {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap();
            assert!(line.ends_with("yes"), "{line}");
        }
    }
}
