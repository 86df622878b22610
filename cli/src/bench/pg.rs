//! `millpond bench --backend postgres`: millpond on its PostgreSQL backend
//! beside the naive use of the same server.
//!
//! The sides, each run in its own child process (`bench-pg-child`) against
//! its own, new database of the same server, one after the other:
//! - `millpond`: the engine with `Config::postgres` (default settings but
//!   `write_delay`, as the other benches set it, and the buffer a workload
//!   asks for: read-heavy's 4 MiB `max_dirty_bytes`, as on the embedded
//!   store); the durable point is its checkpoint and shutdown.
//! - `naive`: one `INSERT INTO kv(k, v) VALUES ($1, $2) ON CONFLICT (k) DO
//!   UPDATE SET v = excluded.v` per write, straight to the server over one
//!   connection per thread, `synchronous_commit = on` (the server's
//!   default: every write durable when it returns). A read-modify-write is
//!   one transaction: `SELECT v ... FOR UPDATE`, then that upsert; a
//!   multi-key change is one transaction that locks and checks every key,
//!   then writes them.
//! - `naive-async`: the same with `synchronous_commit = off`.
//!
//! The workloads are those of the embedded bench, the same code: sessions,
//! tasks, journal, uniform-insert, read-heavy and the YCSB phases
//! (ycsb-load, ycsb-a, ycsb-b, ycsb-c, ycsb-f), each run on the three sides
//! in turn, with one table and one table of millpond's ratios per
//! workload. ttl-churn is refused: the naive sides have no TTLs. Without
//! `--workload` only sessions runs (the naive side with `synchronous_commit
//! = on` does a few thousand writes a second, so every workload at the
//! default scale would take an hour or more). A workload's untimed preload
//! goes in with `synchronous_commit = off` on the naive sides, then one
//! synchronous commit makes it durable. The WAL a side writes is measured
//! over its timed phase (which ends with its durable point) as the
//! difference of `pg_current_wal_insert_lsn()`, and as the difference of
//! `pg_stat_wal.wal_bytes` (read a second after the side's connections
//! closed, so that their counters have been reported). Both count the whole
//! server's WAL (nothing else runs on a temporary server but its own
//! background processes); a `CHECKPOINT` before each timed phase gives
//! every side the same full-page-image start. After its durable point a
//! side is opened again and every key compared with what the workload
//! wrote.
//!
//! Without `--conninfo`, a temporary server is started as the tests do
//! (PostgreSQL 15 of the Debian package `postgresql`: `initdb` as the
//! `postgres` user into a temporary directory, `pg_ctl start` on a free port
//! of 127.0.0.1, socket in that directory) with the server's default
//! settings (`fsync` on), and stopped at the end.
// Without the feature only the argument types and the refusals are used.
#![cfg_attr(not(feature = "postgres"), allow(dead_code))]

use std::ffi::OsString;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::report::{fmt_bytes, fmt_count, fmt_ns, fmt_ratio, Table};
use super::workloads::WorkloadKind;
use super::RunOptions;

/// One side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Side {
    /// millpond on its PostgreSQL backend.
    Millpond,
    /// One upsert per write, `synchronous_commit = on`.
    Naive,
    /// One upsert per write, `synchronous_commit = off`.
    NaiveAsync,
}

impl Side {
    pub const ALL: [Side; 3] = [Side::Millpond, Side::Naive, Side::NaiveAsync];

    pub fn name(self) -> &'static str {
        match self {
            Side::Millpond => "millpond",
            Side::Naive => "naive",
            Side::NaiveAsync => "naive-async",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Side::Millpond => "millpond (postgres backend)",
            Side::Naive => "naive upsert per write, synchronous_commit=on",
            Side::NaiveAsync => "naive upsert per write, synchronous_commit=off",
        }
    }
}

/// `millpond bench-pg-child`: one side of one workload, one JSON line.
#[derive(clap::Args, Debug)]
pub struct ChildArgs {
    #[arg(long, value_enum)]
    pub workload: WorkloadKind,
    #[arg(long, value_enum)]
    pub side: Side,
    /// The side's own (empty) database.
    #[arg(long)]
    pub conninfo: String,
    #[command(flatten)]
    pub options: RunOptions,
}

/// What `bench --backend postgres` was asked to do.
pub struct Plan {
    pub conninfo: Option<String>,
    /// As given on the command line (empty: sessions only).
    pub workloads: Vec<WorkloadKind>,
    pub json: bool,
    pub options: RunOptions,
}

/// One side's results on one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SideReport {
    pub workload: WorkloadKind,
    pub side: Side,
    pub ok: bool,
    pub error: Option<String>,
    pub description: String,
    pub threads: usize,
    pub ops: u64,
    /// The timed phase, its durable point included.
    pub total_secs: f64,
    pub ops_per_sec: f64,
    pub p50_ns: u32,
    pub p99_ns: u32,
    /// `pg_current_wal_insert_lsn()` after minus before.
    pub wal_bytes: u64,
    /// `pg_stat_wal.wal_bytes` after minus before.
    pub stat_wal_bytes: u64,
    pub verified_keys: u64,
    pub notes: Vec<String>,
}

impl SideReport {
    fn failed(workload: WorkloadKind, side: Side, error: String) -> SideReport {
        SideReport {
            workload,
            side,
            ok: false,
            error: Some(error),
            description: String::new(),
            threads: 0,
            ops: 0,
            total_secs: 0.0,
            ops_per_sec: 0.0,
            p50_ns: 0,
            p99_ns: 0,
            wal_bytes: 0,
            stat_wal_bytes: 0,
            verified_keys: 0,
            notes: Vec::new(),
        }
    }
}

/// Everything the parent prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct PgOutput {
    pub command: String,
    pub server: String,
    pub scale: f64,
    pub seed: u64,
    pub write_delay_ms: u64,
    /// The workloads run, in order.
    pub workloads: Vec<WorkloadKind>,
    /// Every side of every workload, in the order they ran (workload by
    /// workload, the sides of one workload together).
    pub sides: Vec<SideReport>,
    /// Partitions handed over on request between two engines.
    pub handover: HandoverReport,
}

/// How long a write to a partition another engine holds takes to succeed
/// (retrying `NotOwner` every millisecond): the request, the owner's cycle
/// and release, and the take. Milliseconds, one per handover.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandoverReport {
    /// The owner wrote its keys, checkpointed, and does nothing since.
    pub idle_ms: Vec<f64>,
    /// The owner keeps writing keys of every partition it still holds
    /// (from one thread, with the bench's `write_delay`).
    pub busy_ms: Vec<f64>,
    pub error: Option<String>,
}

/// The tables: per workload, one of its sides and one of millpond's ratios.
pub fn render(out: &PgOutput) -> String {
    let mut s = String::new();
    for (i, &workload) in out.workloads.iter().enumerate() {
        if i > 0 {
            // One blank line before the next workload's header.
            if !s.ends_with('\n') {
                s.push('\n');
            }
            s.push('\n');
        }
        let reports: Vec<&SideReport> = out
            .sides
            .iter()
            .filter(|r| r.workload == workload)
            .collect();
        render_workload(&mut s, out, workload, &reports);
    }
    s.push('\n');
    render_handover(&mut s, out);
    s
}

/// The handover table.
fn render_handover(s: &mut String, out: &PgOutput) {
    let h = &out.handover;
    s.push_str(&format!(
        "\nhandover on request (two engines, one process; the asker retries NotOwner every \
         ms; owner write_delay {} ms)\n\n",
        out.write_delay_ms
    ));
    let mut t = Table::new(&[
        ("owner", false),
        ("handovers", true),
        ("min", true),
        ("median", true),
        ("max", true),
    ]);
    for (what, ms) in [
        ("idle (nothing dirty)", &h.idle_ms),
        ("busy (writing every partition it holds)", &h.busy_ms),
    ] {
        let mut sorted = ms.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            sorted
                .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
                .map_or_else(String::new, |v| format!("{v:.1} ms"))
        };
        t.row(vec![
            what.into(),
            sorted.len().to_string(),
            at(0.0),
            at(0.5),
            at(1.0),
        ]);
    }
    s.push_str(&t.render());
    if let Some(e) = &h.error {
        s.push_str(&format!("\nhandover: FAILED: {e}\n"));
    }
}

/// One workload's header, tables, failures and notes.
fn render_workload(s: &mut String, out: &PgOutput, workload: WorkloadKind, sides: &[&SideReport]) {
    // A failed side still describes the workload unless its child died.
    let described = sides
        .iter()
        .find(|r| r.ok)
        .or_else(|| sides.iter().find(|r| !r.description.is_empty()));
    let description = described.map_or("", |r| r.description.as_str());
    let threads = match described.map_or(0, |r| r.threads) {
        1 => "1 thread".to_owned(),
        n => format!("{n} threads"),
    };
    s.push_str(&format!(
        "{workload} on PostgreSQL {} ({description}, {threads}); millpond write_delay {} ms, \
         scale {}, seed {}\n\n",
        out.server, out.write_delay_ms, out.scale, out.seed
    ));
    let mut t = Table::new(&[
        ("side", false),
        ("ops/s", true),
        ("p50", true),
        ("p99", true),
        ("time", true),
        ("WAL bytes", true),
        ("WAL/op", true),
        ("pg_stat_wal", true),
        ("keys checked", true),
    ]);
    for r in sides {
        if !r.ok {
            t.row(vec![
                r.side.label().into(),
                "FAILED".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
            ]);
            continue;
        }
        t.row(vec![
            r.side.label().into(),
            fmt_count(r.ops_per_sec.round() as u64),
            fmt_ns(r.p50_ns),
            fmt_ns(r.p99_ns),
            format!("{:.1} s", r.total_secs),
            fmt_bytes(r.wal_bytes),
            fmt_bytes(r.wal_bytes / r.ops.max(1)),
            fmt_bytes(r.stat_wal_bytes),
            fmt_count(r.verified_keys),
        ]);
    }
    s.push_str(&t.render());
    let millpond = sides.iter().find(|r| r.ok && r.side == Side::Millpond);
    let mut ratios = Table::new(&[
        ("millpond / naive", false),
        ("throughput", true),
        ("WAL bytes", true),
    ]);
    if let Some(m) = millpond {
        for r in sides.iter().filter(|r| r.ok && r.side != Side::Millpond) {
            ratios.row(vec![
                format!("vs {}", r.side.label()),
                fmt_ratio(m.ops_per_sec / r.ops_per_sec),
                fmt_ratio(m.wal_bytes as f64 / r.wal_bytes as f64),
            ]);
        }
    }
    if !ratios.is_empty() {
        s.push('\n');
        s.push_str(&ratios.render());
    }
    for r in sides {
        if let Some(e) = &r.error {
            s.push_str(&format!("\n{}: FAILED: {e}\n", r.side.name()));
        }
        for n in &r.notes {
            s.push_str(&format!("\n{}: {n}", r.side.name()));
        }
    }
}

impl super::ChildReport for SideReport {
    fn fail_if_ok(&mut self, why: String) {
        if self.ok {
            self.ok = false;
            self.error = Some(why);
        }
    }
}

/// Runs this program with `args` and reads the report it prints last.
fn child_report(workload: WorkloadKind, side: Side, args: &[OsString]) -> SideReport {
    let failed = |e| SideReport::failed(workload, side, e);
    match std::env::current_exe() {
        Ok(exe) => super::child_report(&exe, args, failed),
        Err(e) => failed(format!("finding this program: {e}")),
    }
}

/// Why ttl-churn does not run here.
const NO_TTLS: &str = "--backend postgres does not run ttl-churn: the naive sides have no TTLs \
     (run it with --backend sled)";

fn check_workloads(workloads: &[WorkloadKind]) -> Result<()> {
    if workloads.contains(&WorkloadKind::TtlChurn) {
        bail!("{NO_TTLS}");
    }
    Ok(())
}

/// The workloads to run: those asked for, in order, each once; sessions
/// when none was.
fn selected(plan: &Plan) -> Vec<WorkloadKind> {
    super::selection(&plan.workloads, &[WorkloadKind::Sessions])
}

#[cfg(not(feature = "postgres"))]
const NO_FEATURE: &str = "this millpond was built without the postgres feature \
     (cargo build -p millpond-cli --features postgres)";

/// `bench --backend postgres` (not built in).
#[cfg(not(feature = "postgres"))]
pub fn run(plan: &Plan) -> Result<std::process::ExitCode> {
    check_workloads(&plan.workloads)?;
    bail!("{NO_FEATURE}")
}

/// `bench-pg-child` (not built in).
#[cfg(not(feature = "postgres"))]
pub fn run_child(_args: ChildArgs) -> Result<std::process::ExitCode> {
    bail!("{NO_FEATURE}")
}

#[cfg(feature = "postgres")]
pub use imp::{run, run_child};

#[cfg(feature = "postgres")]
mod imp {
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::{Command, ExitCode, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
    use std::{env, fs};

    use anyhow::{anyhow, bail, Context, Result};
    use parking_lot::Mutex;
    use postgres::{Client, NoTls, Statement};

    use super::super::targets::{
        Atomicity, Change, Closed, Expect, MillpondTarget, Target, TargetKind, Tuning, Unsupported,
    };
    use super::super::workloads::{Journal, Phase, ReadHeavy, Sessions, Tasks, UniformInsert};
    use super::super::workloads::{Workload, WorkloadKind, Ycsb};
    use super::HandoverReport;
    use super::{check_workloads, child_report, render, selected, ChildArgs, PgOutput, Plan};
    use super::{Side, SideReport, NO_TTLS};

    // -----------------------------------------------------------------------
    // A temporary server

    /// Where the Debian package puts PostgreSQL 15's server binaries.
    const BIN: &str = "/usr/lib/postgresql/15/bin";
    /// The superuser `initdb` creates (trust authentication).
    const USER: &str = "millpond";

    fn bin(name: &str) -> PathBuf {
        Path::new(BIN).join(name)
    }

    /// Why a temporary server cannot be started here, if it cannot.
    fn unavailable() -> Option<String> {
        if !bin("initdb").exists() || !bin("pg_ctl").exists() {
            return Some(format!(
                "{BIN}/initdb or pg_ctl is missing (apt-get install postgresql)"
            ));
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root {
            return Some("initdb must run as the postgres user: this needs root".into());
        }
        if Command::new("runuser").arg("--help").output().is_err() {
            return Some("runuser is missing".into());
        }
        let user = Command::new("id").args(["-u", "postgres"]).output();
        if !user.is_ok_and(|o| o.status.success()) {
            return Some("there is no postgres user".into());
        }
        None
    }

    fn as_postgres(program: &Path, args: &[&str]) -> Result<()> {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running runuser")?;
        if !out.status.success() {
            bail!(
                "{} {args:?} failed: {}{}",
                program.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A server in a temporary directory, stopped and removed on drop.
    struct TempServer {
        dir: PathBuf,
        port: u16,
    }

    impl TempServer {
        fn start() -> Result<TempServer> {
            if let Some(why) = unavailable() {
                bail!(
                    "no temporary PostgreSQL server can be started here ({why}); \
                     give --conninfo"
                );
            }
            let stamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir =
                env::temp_dir().join(format!("millpond-bench-pg-{}-{stamp}", std::process::id()));
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .context("finding a free port")?;
            // From here on, drop removes the directory.
            let server = TempServer { dir, port };
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&server.dir)
                .status()
                .context("running chown")?;
            if !status.success() {
                bail!("chown of {} failed", server.dir.display());
            }
            let data = server.data()?;
            as_postgres(
                &bin("initdb"),
                &[
                    "-D",
                    data,
                    "-A",
                    "trust",
                    "-U",
                    USER,
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            )?;
            let options = format!(
                "-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=50",
                port = server.port
            );
            let log = format!("{data}/server.log");
            as_postgres(
                &bin("pg_ctl"),
                &[
                    "-D", data, "-o", &options, "-l", &log, "-w", "-t", "120", "start",
                ],
            )?;
            server.guard();
            Ok(server)
        }

        fn data(&self) -> Result<&str> {
            self.dir
                .to_str()
                .ok_or_else(|| anyhow!("the temporary directory's path is not UTF-8"))
        }

        fn conninfo(&self) -> String {
            format!(
                "host=127.0.0.1 port={} user={USER} dbname=postgres",
                self.port
            )
        }

        /// A process that stops the server once this one has ended, however
        /// it ends (a no-op when the server is stopped already); it is
        /// never waited for.
        fn guard(&self) {
            let Ok(data) = self.data() else { return };
            let script = format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
                 runuser -u postgres -- {pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; \
                 rm -rf {data}",
                pid = std::process::id(),
                pg_ctl = bin("pg_ctl").display(),
            );
            let _ = Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
        }
    }

    impl Drop for TempServer {
        fn drop(&mut self) {
            if let Ok(data) = self.data() {
                let _ = Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(bin("pg_ctl"))
                    .args(["-D", data, "-m", "fast", "-w", "stop"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    // -----------------------------------------------------------------------
    // The parent

    /// `conninfo` with another database (a later keyword wins).
    fn with_dbname(conninfo: &str, db: &str) -> String {
        format!("{conninfo} dbname={db}")
    }

    /// `bench --backend postgres`.
    pub fn run(plan: &Plan) -> Result<ExitCode> {
        check_workloads(&plan.workloads)?;
        let workloads = selected(plan);
        super::super::check_options(&plan.options)?;
        if let Some(c) = &plan.conninfo {
            if c.contains("://") {
                bail!("--conninfo takes the key=value form (host=... port=... user=...)");
            }
        }
        let server = match plan.conninfo {
            Some(_) => None,
            None => Some(TempServer::start()?),
        };
        let admin = match (&plan.conninfo, &server) {
            (Some(c), _) => c.clone(),
            (None, Some(s)) => s.conninfo(),
            (None, None) => unreachable!("a server was started"),
        };
        let mut client =
            Client::connect(&admin, NoTls).with_context(|| format!("connecting to {admin}"))?;
        let version: String = client.query_one("SHOW server_version", &[])?.get(0);
        let mut sides = Vec::new();
        for &workload in &workloads {
            for side in Side::ALL {
                let report = run_side(&mut client, &admin, workload, side, &plan.options)?;
                eprintln!(
                    "{workload} on {}: {}",
                    side.name(),
                    if report.ok {
                        format!(
                            "{} ops/s, {} WAL bytes",
                            report.ops_per_sec.round(),
                            report.wal_bytes
                        )
                    } else {
                        format!("FAILED: {}", report.error.as_deref().unwrap_or("?"))
                    }
                );
                sides.push(report);
            }
        }
        let handover = handover(&mut client, &admin, plan.options.write_delay_ms);
        eprintln!(
            "handover: {} idle, {} busy{}",
            handover.idle_ms.len(),
            handover.busy_ms.len(),
            handover
                .error
                .as_deref()
                .map_or_else(String::new, |e| format!(", FAILED: {e}"))
        );
        drop(client);
        drop(server);
        let out = PgOutput {
            command: env::args().collect::<Vec<_>>().join(" "),
            server: version,
            scale: plan.options.scale,
            seed: plan.options.seed,
            write_delay_ms: plan.options.write_delay_ms,
            workloads,
            sides,
            handover,
        };
        if plan.json {
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            print!("{}", render(&out));
        }
        let failed =
            out.sides.iter().filter(|r| !r.ok).count() + usize::from(out.handover.error.is_some());
        if failed > 0 {
            eprintln!("millpond bench: {failed} run(s) FAILED");
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Handovers measured per kind of owner.
    const HANDOVERS: usize = 16;

    /// The group of a handover key `g<i>:<who>`: `g<i>` (every key of a
    /// group is in one partition).
    fn handover_group(key: &[u8]) -> &[u8] {
        match key.iter().position(|&b| b == b':') {
            Some(end) => &key[..end],
            None => key,
        }
    }

    /// Two engines on a new database: the owner takes the partitions of
    /// [`HANDOVERS`] groups, the asker then writes a key of each, retrying
    /// `NotOwner` every millisecond, timed from its first attempt. Groups
    /// whose partition the asker already holds (two groups in one
    /// partition) are not counted.
    fn handover(client: &mut Client, admin: &str, write_delay_ms: u64) -> HandoverReport {
        let db = format!("millpond_bench_handover_{}", std::process::id());
        let mut report = HandoverReport::default();
        let created = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
            .and_then(|()| client.batch_execute(&format!("CREATE DATABASE {db}")))
            .with_context(|| format!("creating the database {db}"));
        let outcome = created.and_then(|()| {
            handovers(
                &with_dbname(admin, &db),
                Duration::from_millis(write_delay_ms),
                &mut report,
            )
        });
        if let Err(e) = outcome {
            report.error = Some(format!("{e:#}"));
        }
        if let Err(e) = client.batch_execute(&format!("DROP DATABASE IF EXISTS {db}")) {
            report.error.get_or_insert(format!("dropping {db}: {e}"));
        }
        report
    }

    fn handovers(conninfo: &str, write_delay: Duration, report: &mut HandoverReport) -> Result<()> {
        use millpond::{Config, Engine, Error};
        use std::sync::Arc;
        let config = || {
            Config::postgres(conninfo)
                .write_delay(write_delay)
                .partition_by("handover-bench", handover_group)
        };
        let owner = Engine::open(config()).context("opening the owner")?;
        let asker = Engine::open(config()).context("opening the asker")?;
        // One write by `e`, retried while another engine holds the
        // partition: the milliseconds it took, or `None` if it was `e`'s
        // already.
        let when_owned = |e: &Engine, key: &[u8]| -> Result<Option<f64>> {
            let started = Instant::now();
            let mut first = true;
            loop {
                match e.set(key, b"written") {
                    Ok(()) if first => return Ok(None),
                    Ok(()) => return Ok(Some(started.elapsed().as_secs_f64() * 1e3)),
                    Err(Error::NotOwner { .. }) if started.elapsed() < Duration::from_secs(60) => {
                        first = false;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(e).context("a write"),
                }
            }
        };
        let ask = |key: &[u8]| when_owned(&asker, key);
        // An idle owner.
        for i in 0..HANDOVERS {
            owner.set(format!("i{i}:owner").as_bytes(), b"owner")?;
        }
        owner.checkpoint()?;
        for i in 0..HANDOVERS {
            if let Some(ms) = ask(format!("i{i}:asker").as_bytes())? {
                report.idle_ms.push(ms);
            }
        }
        // A busy owner: one thread keeps writing a key of every group it
        // still holds (a group refused once is dropped, so that the owner
        // does not ask for it back).
        for i in 0..HANDOVERS {
            // The asker may hold the group's partition since the idle
            // round: the owner asks for it back.
            when_owned(&owner, format!("b{i}:owner").as_bytes())?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (owner, stop) = (owner.clone(), Arc::clone(&stop));
            std::thread::spawn(move || -> Result<u64> {
                let mut held: Vec<usize> = (0..HANDOVERS).collect();
                let mut writes = 0u64;
                while !stop.load(Ordering::Relaxed) && !held.is_empty() {
                    let i = held[(writes as usize) % held.len()];
                    match owner.set(format!("b{i}:owner").as_bytes(), &writes.to_le_bytes()) {
                        Ok(()) => writes += 1,
                        Err(Error::NotOwner { .. }) => held.retain(|&g| g != i),
                        Err(e) => return Err(e).context("the owner's write"),
                    }
                }
                Ok(writes)
            })
        };
        let asked: Result<()> = (0..HANDOVERS).try_for_each(|i| {
            if let Some(ms) = ask(format!("b{i}:asker").as_bytes())? {
                report.busy_ms.push(ms);
            }
            Ok(())
        });
        stop.store(true, Ordering::Relaxed);
        let writes = writer
            .join()
            .map_err(|_| anyhow!("the owner's writer panicked"))??;
        asked?;
        if writes == 0 {
            bail!("the busy owner wrote nothing");
        }
        owner.shutdown().context("the owner's shutdown")?;
        asker.shutdown().context("the asker's shutdown")?;
        Ok(())
    }

    /// One side of one workload in a child process, in a new database of
    /// its own (dropped afterwards).
    fn run_side(
        client: &mut Client,
        admin: &str,
        workload: WorkloadKind,
        side: Side,
        options: &super::super::RunOptions,
    ) -> Result<SideReport> {
        let db = format!(
            "millpond_bench_{}_{}_{}",
            workload.name().replace('-', "_"),
            side.name().replace('-', "_"),
            std::process::id()
        );
        client.batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))?;
        client
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .with_context(|| format!("creating the database {db}"))?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "bench-pg-child".into(),
            "--workload".into(),
            workload.name().into(),
            "--side".into(),
            side.name().into(),
            "--conninfo".into(),
            with_dbname(admin, &db).into(),
        ];
        args.extend(options.as_args().into_iter().map(Into::into));
        let report = child_report(workload, side, &args);
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
            .with_context(|| format!("dropping the database {db}"))?;
        Ok(report)
    }

    // -----------------------------------------------------------------------
    // The child

    /// `bench-pg-child`.
    pub fn run_child(args: ChildArgs) -> Result<ExitCode> {
        super::super::check_options(&args.options)?;
        let p = args.options.params();
        let report = match args.workload {
            WorkloadKind::Sessions => on_side(Sessions::new(p), &args),
            WorkloadKind::SessionsJson => on_side(Sessions::json(p), &args),
            WorkloadKind::Tasks => on_side(Tasks::new(p), &args),
            WorkloadKind::Journal => on_side(Journal::new(p), &args),
            WorkloadKind::UniformInsert => on_side(UniformInsert::new(p), &args),
            WorkloadKind::ReadHeavy => on_side(ReadHeavy::new(p), &args),
            WorkloadKind::TtlChurn => bail!("{NO_TTLS}"),
            WorkloadKind::YcsbLoad => on_side(Ycsb::new(p, Phase::Load), &args),
            WorkloadKind::YcsbA => on_side(Ycsb::new(p, Phase::A), &args),
            WorkloadKind::YcsbB => on_side(Ycsb::new(p, Phase::B), &args),
            WorkloadKind::YcsbC => on_side(Ycsb::new(p, Phase::C), &args),
            WorkloadKind::YcsbF => on_side(Ycsb::new(p, Phase::F), &args),
        };
        println!("{}", serde_json::to_string(&report)?);
        Ok(if report.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        })
    }

    /// Workload `w` on the side `args` names.
    fn on_side<W: Workload>(mut w: W, args: &ChildArgs) -> SideReport {
        let mut report = SideReport::failed(args.workload, args.side, String::new());
        report.description = w.describe();
        report.threads = w.threads();
        let conninfo = args.conninfo.as_str();
        let result = match args.side {
            Side::Millpond => {
                // Default settings but write_delay, and the buffer the
                // workload asks millpond for (read-heavy: smaller than its
                // working set), as on the embedded store.
                let base = Tuning {
                    max_dirty_bytes: None,
                    ..args.options.tuning()
                };
                let (tuning, note) = w.tuning(base, TargetKind::Millpond);
                report.notes.extend(note);
                let open = || {
                    let config =
                        millpond::Config::postgres(conninfo).write_delay(tuning.write_delay);
                    let config = match tuning.max_dirty_bytes {
                        Some(bytes) => config.max_dirty_bytes(bytes),
                        None => config,
                    };
                    MillpondTarget::open_config(config)
                };
                measured(&mut w, open, conninfo, &mut report)
            }
            Side::Naive | Side::NaiveAsync => {
                let sync = args.side == Side::Naive;
                measured(
                    &mut w,
                    || NaivePg::connect(conninfo, sync),
                    conninfo,
                    &mut report,
                )
            }
        };
        match result {
            Ok(()) => {
                report.ok = true;
                report.error = None;
            }
            Err(e) => report.error = Some(format!("{e:#}")),
        }
        report
    }

    /// The whole server's WAL position and `pg_stat_wal.wal_bytes`.
    fn wal(monitor: &mut Client) -> Result<(String, i64)> {
        let row = monitor.query_one(
            "SELECT pg_current_wal_insert_lsn()::text, \
             (SELECT wal_bytes::bigint FROM pg_stat_wal)",
            &[],
        )?;
        Ok((row.get(0), row.get(1)))
    }

    fn measured<W: Workload, T: Target>(
        w: &mut W,
        open: impl Fn() -> Result<T>,
        conninfo: &str,
        report: &mut SideReport,
    ) -> Result<()> {
        let mut monitor = Client::connect(conninfo, NoTls).context("connecting to the server")?;
        let t = open()?;
        w.prepare(&t).context("preloading")?;
        t.sync().context("the durable point after preloading")?;
        // Every side starts its timed phase just after a checkpoint (full
        // page images again); a user who may not checkpoint skips it.
        if let Err(e) = monitor.batch_execute("CHECKPOINT") {
            report
                .notes
                .push(format!("no CHECKPOINT before the timed phase: {e}"));
        }
        // Idle connections report their statistics within a second.
        std::thread::sleep(Duration::from_millis(1500));
        let before = wal(&mut monitor)?;
        let started = Instant::now();
        let outcome = w.run(&t);
        let ops_done = started.elapsed().as_secs_f64();
        let mut outcome = outcome.context("the timed phase")?;
        let closed: Closed<T::Handle> = t
            .close()
            .context("the durable point ending the timed phase")?;
        let secs = started.elapsed().as_secs_f64();
        let lsn: i64 = monitor
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)::bigint",
                &[&before.0],
            )?
            .get(0);
        // The closed connections' statistics reach pg_stat_wal when they
        // report them (at exit; at most every second otherwise).
        std::thread::sleep(Duration::from_millis(1500));
        let after = wal(&mut monitor)?;
        report.ops = outcome.ops;
        report.total_secs = secs;
        report.ops_per_sec = outcome.ops as f64 / secs;
        report.p50_ns = outcome.latencies.quantile(0.50);
        report.p99_ns = outcome.latencies.quantile(0.99);
        report.wal_bytes = u64::try_from(lsn).unwrap_or(0);
        report.stat_wal_bytes = u64::try_from(after.1 - before.1).unwrap_or(0);
        report.notes.append(&mut outcome.notes);
        report.notes.push(format!(
            "timed phase {secs:.2} s: {ops_done:.2} s of ops, {:.2} s for the durable point",
            secs - ops_done
        ));
        if let Some(e) = closed.engine {
            report.notes.push(format!(
                "{} writes, {} coalesced in the buffer, {} flush cycles wrote {} entries",
                e.writes, e.coalesced_writes, e.flushes, e.flushed_entries
            ));
        }
        let t = open().context("opening the side again to check it")?;
        let checked = w.verify(&t);
        report.notes.extend(w.verify_notes());
        t.close().context("closing the side after checking it")?;
        report.verified_keys = checked?;
        Ok(())
    }

    // -----------------------------------------------------------------------
    // The naive target

    /// One connection and its prepared statements.
    struct Conn {
        client: Client,
        get: Statement,
        lock: Statement,
        upsert: Statement,
        delete: Statement,
        mark: Statement,
    }

    /// The naive use of the server: every write one `INSERT ... ON CONFLICT
    /// DO UPDATE`, committed at once, each thread on its own connection
    /// (connections are kept in a pool: a thread takes one per op and puts
    /// it back, so the pool holds one per thread).
    pub struct NaivePg {
        conninfo: String,
        /// `synchronous_commit` of the timed phase.
        sync: bool,
        /// Until the first [`Target::sync`]: the untimed preload, committed
        /// with `synchronous_commit = off`.
        preloading: AtomicBool,
        pool: Mutex<Vec<Conn>>,
    }

    impl NaivePg {
        fn connect(conninfo: &str, sync: bool) -> Result<NaivePg> {
            let t = NaivePg {
                conninfo: conninfo.to_owned(),
                sync,
                preloading: AtomicBool::new(true),
                pool: Mutex::new(Vec::new()),
            };
            // The first connection creates the tables.
            t.with(|_| Ok(()))?;
            Ok(t)
        }

        fn setting(&self) -> &'static str {
            if self.sync && !self.preloading.load(Ordering::SeqCst) {
                "SET synchronous_commit TO on"
            } else {
                "SET synchronous_commit TO off"
            }
        }

        fn new_conn(&self) -> Result<Conn> {
            let mut client = Client::connect(&self.conninfo, NoTls)
                .with_context(|| format!("connecting to {}", self.conninfo))?;
            client.batch_execute(
                "CREATE TABLE IF NOT EXISTS kv (k bytea PRIMARY KEY, v bytea NOT NULL);
                 CREATE TABLE IF NOT EXISTS bench_mark (id int PRIMARY KEY, n bigint NOT NULL)",
            )?;
            client.batch_execute(self.setting())?;
            Ok(Conn {
                get: client.prepare("SELECT v FROM kv WHERE k = $1")?,
                lock: client.prepare("SELECT v FROM kv WHERE k = $1 FOR UPDATE")?,
                upsert: client.prepare(
                    "INSERT INTO kv(k, v) VALUES ($1, $2) \
                     ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                )?,
                delete: client.prepare("DELETE FROM kv WHERE k = $1")?,
                mark: client.prepare(
                    "INSERT INTO bench_mark VALUES (1, 1) \
                     ON CONFLICT (id) DO UPDATE SET n = bench_mark.n + 1",
                )?,
                client,
            })
        }

        /// Runs `f` on a connection of the pool (a new one if none is free).
        fn with<R>(&self, f: impl FnOnce(&mut Conn) -> Result<R>) -> Result<R> {
            let free = self.pool.lock().pop();
            let mut c = match free {
                Some(c) => c,
                None => self.new_conn()?,
            };
            let r = f(&mut c)?;
            self.pool.lock().push(c);
            Ok(r)
        }
    }

    impl Target for NaivePg {
        type Val = Vec<u8>;
        type Handle = ();

        fn open(_dir: &Path, _tuning: &Tuning) -> Result<Self> {
            Err(
                Unsupported("the naive PostgreSQL target is opened by bench --backend postgres")
                    .into(),
            )
        }

        fn reopen(dir: &Path, tuning: &Tuning, (): ()) -> Result<Self> {
            NaivePg::open(dir, tuning)
        }

        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
            self.with(|c| {
                let row = c.client.query_opt(&c.get, &[&key])?;
                Ok(row.map(|r| r.get(0)))
            })
        }

        fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
            self.with(|c| {
                c.client.execute(&c.upsert, &[&key, &value])?;
                Ok(())
            })
        }

        /// One transaction: the row locked and read, `f`, then the upsert
        /// (or a delete).
        fn modify<R>(&self, key: &[u8], f: impl FnMut(&mut Option<Vec<u8>>) -> R) -> Result<R> {
            let mut f = f;
            self.with(|c| {
                let mut tx = c.client.transaction()?;
                let mut value: Option<Vec<u8>> = tx.query_opt(&c.lock, &[&key])?.map(|r| r.get(0));
                let r = f(&mut value);
                match &value {
                    Some(v) => tx.execute(&c.upsert, &[&key, v])?,
                    None => tx.execute(&c.delete, &[&key])?,
                };
                tx.commit()?;
                Ok(r)
            })
        }

        fn apply(&self, changes: &[Change<'_>]) -> Result<Atomicity> {
            self.with(|c| {
                let mut tx = c.client.transaction()?;
                for ch in changes {
                    let current: Option<Vec<u8>> =
                        tx.query_opt(&c.lock, &[&ch.key])?.map(|r| r.get(0));
                    let ok = match ch.expect {
                        Expect::Absent => current.is_none(),
                        Expect::Equals(want) => current.as_deref() == Some(want),
                    };
                    if !ok {
                        bail!(
                            "wrong state at key {}",
                            super::super::targets::show_key(ch.key)
                        );
                    }
                }
                for ch in changes {
                    match ch.new {
                        Some(v) => tx.execute(&c.upsert, &[&ch.key, &v])?,
                        None => tx.execute(&c.delete, &[&ch.key])?,
                    };
                }
                tx.commit()?;
                Ok(Atomicity::Atomic)
            })
        }

        fn set_with_ttl(&self, _key: &[u8], _value: &[u8], _ttl: Duration) -> Result<()> {
            Err(Unsupported("the naive PostgreSQL target has no TTLs").into())
        }

        fn ttl_entries(&self) -> Result<u64> {
            Ok(0)
        }

        /// One commit with `synchronous_commit = on` (the WAL is flushed in
        /// order, so every commit before it is durable too); after the
        /// preload, every connection takes the timed phase's setting.
        fn sync(&self) -> Result<()> {
            self.with(|c| {
                let mut tx = c.client.transaction()?;
                tx.batch_execute("SET LOCAL synchronous_commit TO on")?;
                tx.execute(&c.mark, &[])?;
                tx.commit()?;
                Ok(())
            })?;
            if self.preloading.swap(false, Ordering::SeqCst) {
                let setting = self.setting();
                for c in self.pool.lock().iter_mut() {
                    c.client.batch_execute(setting)?;
                }
            }
            Ok(())
        }

        fn close(self) -> Result<Closed<()>> {
            self.sync()?;
            Ok(Closed {
                handle: (),
                engine: None,
            })
        }
    }
}
