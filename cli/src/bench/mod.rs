//! `millpond bench`: the side-by-side benchmark driver.
//!
//! The parent (`bench`) runs each (workload, target) pair in a fresh child
//! process (`bench-child`, hidden), so that peak RSS and the bytes written
//! to the device are those of that run alone. A child opens its store,
//! runs the workload's untimed preload and a durable point, then the timed
//! phase, which ends with the target's durable point; it then reopens the
//! store, compares every key with what the workload wrote, and prints one
//! JSON line ([`report::RunReport`]). The parent prints the tables.
//!
//! `bench --soak DURATION` runs [`soak`] instead: one long run in this
//! process, watched for stalls. `bench --journal-modes` runs
//! [`journal_modes`] instead: millpond's write-ahead journal modes beside
//! peers that make every write durable, each run in a child process
//! (`bench-journal-child`, hidden) in the same way. `bench --backend
//! postgres` runs [`pg`] instead: millpond on its PostgreSQL backend beside
//! one upsert per write, each side in a child process (`bench-pg-child`,
//! hidden); it needs the `postgres` feature.

pub mod journal_modes;
pub mod measure;
pub mod pg;
pub mod report;
pub mod soak;
pub mod targets;
pub mod workloads;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{env, fs};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use measure::{disk_usage, peak_rss_bytes, IoCounters};
use report::{BenchOutput, RunReport, Status};
use targets::{FjallTarget, MemoryTarget, MillpondTarget, RedbTarget, SledTarget};
use targets::{Target, TargetKind, Tuning, Unsupported};
use workloads::Ycsb;
use workloads::{Journal, Params, Phase, ReadHeavy, Sessions, Tasks, TtlChurn, UniformInsert};
use workloads::{Workload, WorkloadKind};

/// Options shared by `bench` and `bench-child`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunOptions {
    /// Multiplies the workloads' sizes: the op counts of sessions and
    /// read-heavy, the task count of tasks, the event count of journal, the
    /// key count of uniform-insert (their key sets stay 10,000 and 100,000
    /// keys); with --journal-modes, the time of each run (4 s). The table
    /// shows the counts used.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Seed of every workload's random choices and values.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// millpond's write_delay, and sled's flush_every_ms (same staleness).
    #[arg(long, default_value_t = 500)]
    pub write_delay_ms: u64,
    /// millpond's flush_threads.
    #[arg(long, default_value_t = 2)]
    pub flush_threads: usize,
    /// millpond's max_dirty_bytes, in MiB [default: the engine's default, a
    /// share of physical memory between 64 and 512 MiB]. read-heavy uses its
    /// own, smaller buffer.
    #[arg(long)]
    pub max_dirty_mib: Option<usize>,
    /// millpond's inline_threshold (values up to this many bytes live in
    /// their metadata record) [default: the engine's default].
    #[arg(long)]
    pub inline_threshold: Option<usize>,
    /// millpond's compression of values longer than inline_threshold
    /// [default: the engine's default, lz4].
    #[arg(long, value_enum)]
    pub compression: Option<CompressionArg>,
}

/// `--compression`: millpond's `Compression`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionArg {
    /// Values stored as written.
    None,
    /// LZ4 where it saves an eighth.
    Lz4,
}

impl CompressionArg {
    fn engine(self) -> millpond::Compression {
        match self {
            CompressionArg::None => millpond::Compression::None,
            CompressionArg::Lz4 => millpond::Compression::Lz4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CompressionArg::None => "none",
            CompressionArg::Lz4 => "lz4",
        }
    }
}

impl RunOptions {
    fn tuning(&self) -> Tuning {
        Tuning {
            write_delay: Duration::from_millis(self.write_delay_ms),
            max_dirty_bytes: self.max_dirty_mib.map(|m| m << 20),
            flush_threads: self.flush_threads,
            inline_threshold: self.inline_threshold,
            compression: self.compression.map(CompressionArg::engine),
        }
    }

    fn params(&self) -> Params {
        Params {
            scale: self.scale,
            seed: self.seed,
        }
    }

    fn as_args(&self) -> Vec<String> {
        let mut args = vec![
            "--scale".into(),
            self.scale.to_string(),
            "--seed".into(),
            self.seed.to_string(),
            "--write-delay-ms".into(),
            self.write_delay_ms.to_string(),
            "--flush-threads".into(),
            self.flush_threads.to_string(),
        ];
        if let Some(m) = self.max_dirty_mib {
            args.push("--max-dirty-mib".into());
            args.push(m.to_string());
        }
        if let Some(t) = self.inline_threshold {
            args.push("--inline-threshold".into());
            args.push(t.to_string());
        }
        if let Some(c) = self.compression {
            args.push("--compression".into());
            args.push(c.name().into());
        }
        args
    }
}

/// `millpond bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Workloads to run, comma-separated [default: all; with --backend
    /// postgres, sessions].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workload: Vec<WorkloadKind>,
    /// Stores to run them against, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub target: Vec<TargetKind>,
    /// Where the stores go (a fresh directory is made inside) [default: the
    /// system's temporary directory].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the stores after the run.
    #[arg(long)]
    pub keep: bool,
    /// Print the results as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Instead of the workloads: a soak of this long (`10m`, `90s`, `1h`,
    /// or seconds) of the sessions workload with a watchdog that reports
    /// any op, checkpoint or flush cycle longer than --stall-after, progress
    /// every 10 s and a verdict; exit status 1 on a stall. Runs against
    /// millpond unless --target says otherwise (e.g. millpond,sled).
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["workload", "json"])]
    pub soak: Option<soak::SoakDuration>,
    /// With --soak: how long anything may take before it is a stall
    /// [default: 30s].
    #[arg(
        long,
        value_name = "DURATION",
        requires = "soak",
        conflicts_with_all = ["workload", "json"]
    )]
    pub stall_after: Option<soak::SoakDuration>,
    /// Instead of the workloads: millpond's journal modes (Off,
    /// Periodic(100ms), Process, Power) beside the peers at Power's
    /// guarantee (sled insert + flush() per write, redb one
    /// Durability::Immediate commit per write, fjall insert +
    /// persist(SyncAll) per write): `set` of 100-byte values over 100,000
    /// preloaded 16-byte keys from 1, 4 and 16 threads, 4 s per run (times
    /// --scale), each run in its own process and checked after reopening.
    /// Prints ops/s and p99 per side and thread count, and the issue's
    /// ratios. --target narrows the sides (millpond: its four modes).
    #[arg(long, conflicts_with_all = ["workload", "soak"])]
    pub journal_modes: bool,
    /// With --journal-modes: the thread counts, comma-separated [default:
    /// 1,4,16].
    #[arg(long, value_delimiter = ',', requires = "journal_modes")]
    pub threads: Vec<usize>,
    /// With --journal-modes: how many keys the runs write (each thread its
    /// own share, every key preloaded and checked) [default: 100000].
    #[arg(long, requires = "journal_modes")]
    pub keys: Option<u64>,
    /// Which storage millpond runs on: `sled` (the embedded default, the
    /// workloads above) or `postgres` (the workloads on millpond's
    /// PostgreSQL backend beside one `INSERT ... ON CONFLICT DO UPDATE` per
    /// write, throughput and WAL bytes; sessions unless --workload names
    /// others, every one but ttl-churn; needs the CLI's `postgres` feature).
    #[arg(long, value_enum, default_value = "sled", conflicts_with_all = ["soak", "journal_modes"])]
    pub backend: Backend,
    /// With --backend postgres: the server to use (a libpq connection
    /// string of a superuser or a user that may create databases)
    /// [default: a temporary server started here, as root, from the
    /// Debian package's binaries, stopped at the end].
    #[arg(long)]
    pub conninfo: Option<String>,
    #[command(flatten)]
    pub options: RunOptions,
}

/// The storage `bench` runs millpond on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The embedded store (sled), beside the other embedded stores.
    Sled,
    /// millpond's PostgreSQL backend, beside the naive use of the server.
    Postgres,
}

/// `millpond bench-child`: one run, one JSON line.
#[derive(clap::Args, Debug)]
pub struct ChildArgs {
    #[arg(long, value_enum)]
    pub workload: WorkloadKind,
    #[arg(long, value_enum)]
    pub target: TargetKind,
    /// The store's directory (must not exist or be empty).
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub options: RunOptions,
}

fn check_options(o: &RunOptions) -> Result<()> {
    if !(o.scale.is_finite() && o.scale > 0.0) {
        bail!("--scale must be a positive number, not {}", o.scale);
    }
    Ok(())
}

/// Keeps the first occurrence of each element; all of `all` when empty.
fn selection<T: Copy + PartialEq>(chosen: &[T], all: &[T]) -> Vec<T> {
    let source = if chosen.is_empty() { all } else { chosen };
    let mut out = Vec::new();
    for &x in source {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// The parent: runs every pair in a child, then prints.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    check_options(&args.options)?;
    if args.backend == Backend::Postgres {
        return pg::run(&pg::Plan {
            conninfo: args.conninfo.clone(),
            workloads: args.workload.clone(),
            json: args.json,
            options: args.options.clone(),
        });
    }
    if args.conninfo.is_some() {
        bail!("--conninfo goes with --backend postgres");
    }
    let parent = args.dir.clone().unwrap_or_else(env::temp_dir);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let root = parent.join(format!("millpond-bench-{}-{stamp}", std::process::id()));
    fs::create_dir_all(&root)
        .with_context(|| format!("creating the bench directory {}", root.display()))?;
    if let Some(duration) = args.soak {
        let code = soak::run(&soak::SoakArgs {
            duration: duration.0,
            stall_after: args.stall_after.map_or(soak::STALL_AFTER, |d| d.0),
            targets: selection(&args.target, &[TargetKind::Millpond]),
            dir: root.clone(),
            keep: args.keep,
            tuning: args.options.tuning(),
            seed: args.options.seed,
        })?;
        if !args.keep {
            remove_dir(&root)?;
        }
        return Ok(code);
    }
    if args.journal_modes {
        let code = journal_modes::run(&journal_modes::Plan {
            targets: args.target.clone(),
            threads: args.threads.clone(),
            keys: args.keys,
            root: root.clone(),
            keep: args.keep,
            json: args.json,
            options: args.options.clone(),
        })?;
        if args.keep {
            eprintln!("stores kept in {}", root.display());
        } else {
            remove_dir(&root)?;
        }
        return Ok(code);
    }
    let workloads = selection(&args.workload, &WorkloadKind::ALL);
    let targets = selection(&args.target, &TargetKind::ALL);
    let exe = env::current_exe().context("finding this program's path to start child runs")?;

    let bar = progress_bar(workloads.len() * targets.len());
    let started = Instant::now();
    let mut reports = Vec::new();
    for &w in &workloads {
        for &t in &targets {
            bar.set_message(format!("{w} on {t}"));
            let dir = root.join(format!("{w}-{}", t.name()));
            let report = run_in_child(&exe, w, t, &dir, &args.options);
            bar.println(summary_line(&report));
            reports.push(report);
            bar.inc(1);
            if !args.keep {
                remove_dir(&dir)?;
            }
        }
    }
    bar.finish_and_clear();
    if args.keep {
        eprintln!("stores kept in {}", root.display());
    } else {
        remove_dir(&root)?;
    }

    let out = BenchOutput {
        command: env::args().collect::<Vec<_>>().join(" "),
        scale: args.options.scale,
        seed: args.options.seed,
        write_delay_ms: args.options.write_delay_ms,
        flush_threads: args.options.flush_threads,
        wall_secs: started.elapsed().as_secs_f64(),
        runs: reports,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", report::render(&out));
    }
    let failed = out
        .runs
        .iter()
        .filter(|r| r.status == Status::Failed)
        .count();
    if failed > 0 {
        eprintln!("millpond bench: {failed} run(s) FAILED");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar over `runs` runs on a terminal; a hidden one otherwise.
fn progress_bar(runs: usize) -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(runs as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

fn summary_line(r: &RunReport) -> String {
    match r.status {
        Status::NotRun => format!(
            "{} on {}: {}",
            r.workload,
            r.target,
            r.error.as_deref().unwrap_or("not run")
        ),
        Status::Ok => format!(
            "{} on {}: {} ops/s, {:.1} s",
            r.workload,
            r.target,
            report::fmt_count(r.ops_per_sec.round() as u64),
            r.total_secs
        ),
        Status::Failed => format!(
            "{} on {}: FAILED: {}",
            r.workload,
            r.target,
            r.error.as_deref().unwrap_or("?")
        ),
    }
}

/// Runs one pair in a child process and reads its report. A child that
/// dies or prints no report is a failed run.
fn run_in_child(
    exe: &Path,
    workload: WorkloadKind,
    target: TargetKind,
    dir: &Path,
    options: &RunOptions,
) -> RunReport {
    let mut args: Vec<OsString> = ["bench-child", "--workload", workload.name()]
        .into_iter()
        .chain(["--target", target.name(), "--dir"])
        .map(OsString::from)
        .collect();
    args.push(dir.into());
    args.extend(options.as_args().into_iter().map(OsString::from));
    child_report(exe, &args, |e| RunReport::failed(workload, target, e))
}

/// A report a child run prints as its last line of JSON.
pub(crate) trait ChildReport: serde::de::DeserializeOwned {
    /// A report that says it succeeded, from a child that exited with an
    /// error: mark it failed, with `why`.
    fn fail_if_ok(&mut self, why: String);
}

impl ChildReport for RunReport {
    fn fail_if_ok(&mut self, why: String) {
        if self.status == Status::Ok {
            self.status = Status::Failed;
            self.error = Some(why);
        }
    }
}

/// Runs this program with `args` (a child run) and reads the report it
/// prints last on stdout; `failed` makes the report of a child that could
/// not start, died or printed none.
fn child_report<R: ChildReport>(exe: &Path, args: &[OsString], failed: impl Fn(String) -> R) -> R {
    let output = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => return failed(format!("could not start a child: {e}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let parsed = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(serde_json::from_str::<R>);
    match parsed {
        Some(Ok(mut report)) => {
            if !output.status.success() {
                report.fail_if_ok(format!("the child exited with {}", output.status));
            }
            report
        }
        Some(Err(e)) => failed(format!(
            "the child ({}) printed no readable report: {e}",
            output.status
        )),
        None => failed(format!(
            "the child exited with {} and printed no report",
            output.status
        )),
    }
}

/// The child: one run, one JSON line on stdout; exit status 2 when the run
/// failed (including a wrong final state).
pub fn run_child(args: ChildArgs) -> Result<ExitCode> {
    check_options(&args.options)?;
    let p = args.options.params();
    let tuning = args.options.tuning();
    let (t, dir) = (args.target, args.dir.as_path());
    let report = match args.workload {
        WorkloadKind::Sessions => on_target(Sessions::new(p), args.workload, t, dir, tuning),
        WorkloadKind::SessionsJson => on_target(Sessions::json(p), args.workload, t, dir, tuning),
        WorkloadKind::Tasks => on_target(Tasks::new(p), args.workload, t, dir, tuning),
        WorkloadKind::Journal => on_target(Journal::new(p), args.workload, t, dir, tuning),
        WorkloadKind::UniformInsert => {
            on_target(UniformInsert::new(p), args.workload, t, dir, tuning)
        }
        WorkloadKind::ReadHeavy => on_target(ReadHeavy::new(p), args.workload, t, dir, tuning),
        WorkloadKind::TtlChurn => on_target(TtlChurn::new(p), args.workload, t, dir, tuning),
        WorkloadKind::YcsbLoad => ycsb(p, Phase::Load, args.workload, t, dir, tuning),
        WorkloadKind::YcsbA => ycsb(p, Phase::A, args.workload, t, dir, tuning),
        WorkloadKind::YcsbB => ycsb(p, Phase::B, args.workload, t, dir, tuning),
        WorkloadKind::YcsbC => ycsb(p, Phase::C, args.workload, t, dir, tuning),
        WorkloadKind::YcsbF => ycsb(p, Phase::F, args.workload, t, dir, tuning),
    };
    let what = format!("bench-child: {} on {}", report.workload, report.target);
    finish_child(&report, &what)
}

/// Prints a child run's report (the last line its parent reads) and
/// returns its exit status: 2, with `what` FAILED on stderr, if it failed.
fn finish_child(report: &RunReport, what: &str) -> Result<ExitCode> {
    println!("{}", serde_json::to_string(report)?);
    if report.status == Status::Failed {
        eprintln!(
            "millpond {what} FAILED: {}",
            report.error.as_deref().unwrap_or("?")
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn ycsb(
    p: Params,
    phase: Phase,
    workload: WorkloadKind,
    target: TargetKind,
    dir: &Path,
    base: Tuning,
) -> RunReport {
    on_target(Ycsb::new(p, phase), workload, target, dir, base)
}

fn on_target<W: Workload>(
    w: W,
    workload: WorkloadKind,
    target: TargetKind,
    dir: &Path,
    base: Tuning,
) -> RunReport {
    match target {
        TargetKind::Millpond => drive::<W, MillpondTarget>(w, workload, target, dir, base),
        TargetKind::Sled => drive::<W, SledTarget>(w, workload, target, dir, base),
        TargetKind::Fjall => drive::<W, FjallTarget>(w, workload, target, dir, base),
        TargetKind::Redb => drive::<W, RedbTarget>(w, workload, target, dir, base),
        TargetKind::InMemory => drive::<W, MemoryTarget>(w, workload, target, dir, base),
    }
}

fn drive<W: Workload, T: Target>(
    mut w: W,
    workload: WorkloadKind,
    target: TargetKind,
    dir: &Path,
    base: Tuning,
) -> RunReport {
    let mut report = RunReport::new(workload, target);
    report.description = w.describe();
    report.threads = w.threads();
    let (tuning, note) = w.tuning(base, target);
    report.notes.extend(note);
    if let Err(e) = measured_run::<W, T>(&mut w, dir, &tuning, &mut report) {
        match e.chain().find_map(|c| c.downcast_ref::<Unsupported>()) {
            Some(unsupported) => {
                report = RunReport::not_run(workload, target, unsupported.0);
                report.description = w.describe();
            }
            None => {
                report.status = Status::Failed;
                report.error = Some(format!("{e:#}"));
            }
        }
    }
    report
}

fn measured_run<W: Workload, T: Target>(
    w: &mut W,
    dir: &Path,
    tuning: &Tuning,
    report: &mut RunReport,
) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let t = T::open(dir, tuning)?;
    w.prepare(&t).context("preloading")?;
    t.sync().context("the durable point after preloading")?;

    let io_before = IoCounters::read()?;
    let started = Instant::now();
    let outcome = w.run(&t);
    let ops_done = Instant::now();
    let mut outcome = outcome.context("the timed phase")?;
    let closed = t
        .close()
        .context("the durable point ending the timed phase")?;
    let ended = Instant::now();
    let io_after = IoCounters::read()?;
    report.peak_rss_bytes = peak_rss_bytes()?;

    report.ops = outcome.ops;
    report.logical_bytes = outcome.logical_bytes;
    report.ops_secs = (ops_done - started).as_secs_f64();
    report.durable_secs = (ended - ops_done).as_secs_f64();
    report.total_secs = (ended - started).as_secs_f64();
    report.ops_per_sec = outcome.ops as f64 / report.total_secs;
    report.mean_ns = outcome.latencies.mean();
    report.p50_ns = outcome.latencies.quantile(0.50);
    report.p99_ns = outcome.latencies.quantile(0.99);
    report.p999_ns = outcome.latencies.quantile(0.999);
    report.max_ns = outcome.latencies.max();
    report.write_bytes = io_after.write_bytes - io_before.write_bytes;
    report.cancelled_write_bytes = io_after.cancelled_write_bytes - io_before.cancelled_write_bytes;
    report.disk_bytes = disk_usage(dir).with_context(|| format!("measuring {}", dir.display()))?;
    report.engine = closed.engine;
    report.notes.append(&mut outcome.notes);

    let verify_started = Instant::now();
    let t = T::reopen(dir, tuning, closed.handle).context("reopening the store to check it")?;
    let checked = w.verify(&t);
    report.notes.extend(w.verify_notes());
    t.close().context("closing the store after checking it")?;
    report.verified_keys = checked?;
    report.verify_secs = verify_started.elapsed().as_secs_f64();
    Ok(())
}
