//! A run's results (the JSON line a child prints) and the tables the parent
//! prints from them.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::targets::{EngineStats, TargetKind};
use super::workloads::WorkloadKind;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Ran, and the store held exactly what the workload wrote.
    #[default]
    Ok,
    /// Failed: an error, or the store's contents were wrong.
    Failed,
    /// Not run (the workload needs an op the store cannot do).
    NotRun,
}

/// One (workload, target) run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunReport {
    pub workload: String,
    pub target: String,
    pub status: Status,
    /// Why the run failed or was not run.
    pub error: Option<String>,
    pub description: String,
    pub threads: usize,
    pub ops: u64,
    /// Key + value bytes of every write the workload made.
    pub logical_bytes: u64,
    /// Seconds spent in the ops themselves.
    pub ops_secs: f64,
    /// Seconds spent reaching the durable point after the last op
    /// (millpond: checkpoint + shutdown; sled: flush + drop; fjall:
    /// persist(SyncAll) + drop; redb: a durable commit + close).
    pub durable_secs: f64,
    /// `ops_secs + durable_secs`.
    pub total_secs: f64,
    /// `ops / total_secs`.
    pub ops_per_sec: f64,
    pub mean_ns: u32,
    pub p50_ns: u32,
    pub p99_ns: u32,
    pub p999_ns: u32,
    pub max_ns: u32,
    /// `/proc/self/io` write_bytes over the timed phase and durable point.
    pub write_bytes: u64,
    pub cancelled_write_bytes: u64,
    /// Allocated size of the store's files after the durable point.
    pub disk_bytes: u64,
    /// Peak resident set (VmHWM) of the run's process, read after the
    /// durable point (before verification).
    pub peak_rss_bytes: u64,
    /// Keys compared with the expected contents after reopening.
    pub verified_keys: u64,
    pub verify_secs: f64,
    pub notes: Vec<String>,
    /// millpond's own counters (millpond runs only).
    pub engine: Option<EngineStats>,
}

impl RunReport {
    pub fn new(workload: WorkloadKind, target: TargetKind) -> RunReport {
        RunReport {
            workload: workload.name().into(),
            target: target.name().into(),
            ..RunReport::default()
        }
    }

    pub fn failed(workload: WorkloadKind, target: TargetKind, error: String) -> RunReport {
        RunReport {
            status: Status::Failed,
            error: Some(error),
            ..RunReport::new(workload, target)
        }
    }

    pub fn not_run(workload: WorkloadKind, target: TargetKind, reason: &str) -> RunReport {
        RunReport {
            workload: workload.name().into(),
            target: target.name().into(),
            status: Status::NotRun,
            error: Some(format!("not run: {reason}")),
            ..RunReport::default()
        }
    }

    /// Bytes sent to the device per logical byte written.
    pub fn write_amplification(&self) -> Option<f64> {
        (self.logical_bytes > 0).then(|| self.write_bytes as f64 / self.logical_bytes as f64)
    }
}

/// Everything `bench --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchOutput {
    pub command: String,
    pub scale: f64,
    pub seed: u64,
    pub write_delay_ms: u64,
    pub flush_threads: usize,
    pub wall_secs: f64,
    pub runs: Vec<RunReport>,
}

// ---------------------------------------------------------------------------
// Formatting

/// 1234567 -> "1,234,567".
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Nanoseconds, in the unit that keeps 3 significant digits readable.
pub fn fmt_ns(ns: u32) -> String {
    let ns = f64::from(ns);
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Bytes, in binary units.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A ratio such as "12.3x" or "0.45x".
pub fn fmt_ratio(r: f64) -> String {
    if !r.is_finite() {
        "-".into()
    } else if r >= 10.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}

/// A plain text table: columns padded to their widest cell, numbers right
/// aligned.
pub struct Table {
    headers: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `columns`: (header, right-aligned).
    pub fn new(columns: &[(&str, bool)]) -> Table {
        Table {
            headers: columns.iter().map(|c| c.0.to_string()).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
            let mut text = String::new();
            for (i, cell) in cells.enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - width(cell));
                if self.right[i] {
                    text.push_str(&pad);
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    text.push_str(&pad);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut out, &mut self.headers.iter().map(String::as_str));
        let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
        line(&mut out, &mut rule.iter().map(String::as_str));
        for row in &self.rows {
            line(&mut out, &mut row.iter().map(String::as_str));
        }
        out
    }
}

/// A measure compared between millpond and a peer.
#[derive(Clone, Copy)]
enum Measure {
    Throughput,
    DeviceBytes,
}

impl Measure {
    fn of(self, r: &RunReport) -> f64 {
        match self {
            Measure::Throughput => r.ops_per_sec,
            Measure::DeviceBytes => r.write_bytes as f64,
        }
    }

    /// `millpond / peer`, "-" where the peer did not run; fewer bytes are
    /// also shown as "(Nx fewer)".
    fn ratio(self, m: &RunReport, peer: Option<&RunReport>) -> String {
        let Some(p) = peer else {
            return "-".into();
        };
        let (mine, theirs) = (self.of(m), self.of(p));
        if let Measure::DeviceBytes = self {
            // A run that wrote nothing (ycsb-c) has no ratio to speak of.
            match (mine == 0.0, theirs == 0.0) {
                (true, true) => return "none written".into(),
                (true, false) => return format!("0 B vs {}", fmt_bytes(theirs as u64)),
                (false, true) => return format!("{} vs 0 B", fmt_bytes(mine as u64)),
                _ => {}
            }
        }
        let r = mine / theirs;
        match self {
            Measure::DeviceBytes if r > 0.0 && r < 1.0 => {
                format!("{} ({:.1}x fewer)", fmt_ratio(r), 1.0 / r)
            }
            _ => fmt_ratio(r),
        }
    }
}

/// The summary: millpond's throughput and device bytes as ratios to each
/// peer that ran, one row per workload. The in-memory map writes nothing to
/// the device, so it has no bytes column.
fn ratio_tables(runs: &[RunReport], workloads: &[&str]) -> String {
    let ran = |t: TargetKind| {
        runs.iter()
            .any(|r| r.target == t.name() && r.status == Status::Ok)
    };
    let peers: Vec<TargetKind> = TargetKind::ALL
        .into_iter()
        .filter(|&t| t != TargetKind::Millpond && ran(t))
        .collect();
    let disk_peers: Vec<TargetKind> = peers
        .iter()
        .copied()
        .filter(|&t| t != TargetKind::InMemory)
        .collect();
    let mut text = String::new();
    for (measure, peers, title) in [
        (
            Measure::Throughput,
            &peers,
            "millpond / peer, throughput (ops/s; above 1x: millpond is faster):",
        ),
        (
            Measure::DeviceBytes,
            &disk_peers,
            "millpond / peer, bytes written to the device (below 1x: millpond wrote fewer):",
        ),
    ] {
        if peers.is_empty() {
            continue;
        }
        let columns: Vec<(&'static str, bool)> = std::iter::once(("workload", false))
            .chain(peers.iter().map(|t| (t.name(), true)))
            .collect();
        let mut table = Table::new(&columns);
        for w in workloads {
            let Some(m) = find(runs, w, TargetKind::Millpond) else {
                continue;
            };
            let cells = std::iter::once(w.to_string())
                .chain(peers.iter().map(|&t| measure.ratio(m, find(runs, w, t))));
            table.row(cells.collect());
        }
        if !table.rows.is_empty() {
            let _ = writeln!(text, "\n{title}");
            text.push_str(&table.render());
        }
    }
    text
}

fn find<'a>(runs: &'a [RunReport], workload: &str, target: TargetKind) -> Option<&'a RunReport> {
    runs.iter()
        .find(|r| r.workload == workload && r.target == target.name() && r.status == Status::Ok)
}

/// The tables and notes printed by `bench`.
pub fn render(out: &BenchOutput) -> String {
    let mut text = String::new();
    let mut main = Table::new(&[
        ("workload", false),
        ("target", false),
        ("thr", true),
        ("ops", true),
        ("ops/s", true),
        ("mean", true),
        ("p50", true),
        ("p99", true),
        ("p99.9", true),
        ("total s", true),
        ("durable s", true),
        ("dev B/logical B", true),
        ("disk", true),
        ("peak RSS", true),
        ("check", false),
    ]);
    for (i, r) in out.runs.iter().enumerate() {
        match r.status {
            Status::NotRun => {
                // One row for a workload no target ran, for the same reason.
                let same = |o: &RunReport| {
                    o.workload == r.workload && o.status == Status::NotRun && o.error == r.error
                };
                if i > 0 && same(&out.runs[i - 1]) {
                    continue;
                }
                let all = out
                    .runs
                    .iter()
                    .filter(|o| o.workload == r.workload)
                    .all(same);
                let mut cells = vec![String::new(); 15];
                cells[0] = r.workload.clone();
                cells[1] = if all { "all".into() } else { r.target.clone() };
                cells[14] = r.error.clone().unwrap_or_else(|| "not run".into());
                main.row(cells);
            }
            Status::Failed if r.ops == 0 => {
                let mut cells = vec![String::new(); 15];
                cells[0] = r.workload.clone();
                cells[1] = r.target.clone();
                cells[14] = "FAILED (see below)".into();
                main.row(cells);
            }
            _ => main.row(vec![
                r.workload.clone(),
                r.target.clone(),
                r.threads.to_string(),
                fmt_count(r.ops),
                fmt_count(r.ops_per_sec.round() as u64),
                fmt_ns(r.mean_ns),
                fmt_ns(r.p50_ns),
                fmt_ns(r.p99_ns),
                fmt_ns(r.p999_ns),
                format!("{:.2}", r.total_secs),
                format!("{:.2}", r.durable_secs),
                r.write_amplification()
                    .map_or_else(|| "-".into(), |w| format!("{w:.2}")),
                fmt_bytes(r.disk_bytes),
                fmt_bytes(r.peak_rss_bytes),
                match r.status {
                    Status::Ok => format!("ok ({} keys)", fmt_count(r.verified_keys)),
                    _ => "FAILED (see below)".into(),
                },
            ]),
        }
    }
    text.push_str(&main.render());

    // millpond against each peer.
    let mut workloads: Vec<&str> = Vec::new();
    for r in &out.runs {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    text.push_str(&ratio_tables(&out.runs, &workloads));

    // millpond's own counters.
    let mut engine = Table::new(&[
        ("workload", false),
        ("writes", true),
        ("coalesced", true),
        ("coalesced %", true),
        ("flushes", true),
        ("flushed entries", true),
        ("syncs", true),
        ("blobs written", true),
        ("flush errors", true),
    ]);
    for r in &out.runs {
        let Some(e) = &r.engine else { continue };
        let pct = if e.writes > 0 {
            format!("{:.1}", 100.0 * e.coalesced_writes as f64 / e.writes as f64)
        } else {
            "-".into()
        };
        engine.row(vec![
            r.workload.clone(),
            fmt_count(e.writes),
            fmt_count(e.coalesced_writes),
            pct,
            fmt_count(e.flushes),
            fmt_count(e.flushed_entries),
            fmt_count(e.syncs),
            fmt_count(e.blobs_written),
            fmt_count(e.flush_errors),
        ]);
    }
    if !engine.rows.is_empty() {
        text.push_str("\nmillpond engine stats (whole run, preload included):\n");
        text.push_str(&engine.render());
    }

    // Workload shapes, notes and failures.
    text.push_str("\nworkloads:\n");
    for w in &workloads {
        if let Some(r) = out
            .runs
            .iter()
            .find(|r| r.workload == *w && !r.description.is_empty())
        {
            let threads = match r.threads {
                0 => String::new(),
                1 => " (1 thread)".into(),
                n => format!(" ({n} threads)"),
            };
            let _ = writeln!(text, "  {w}: {}{threads}", r.description);
        }
    }
    // (workload, note, targets that made it)
    let mut notes: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for r in &out.runs {
        for n in &r.notes {
            match notes
                .iter_mut()
                .find(|(w, text, _)| *w == r.workload && text == n)
            {
                Some((_, _, targets)) => targets.push(&r.target),
                None => notes.push((&r.workload, n, vec![&r.target])),
            }
        }
    }
    let _ = writeln!(
        text,
        "\nsettings: scale {}, seed {}, write_delay {} ms (sled flush_every_ms {}), flush_threads {}; \
         wall time {:.1} s",
        out.scale, out.seed, out.write_delay_ms, out.write_delay_ms, out.flush_threads, out.wall_secs
    );
    text.push_str(
        "columns: ops/s = ops / total s; total s includes the durable point (millpond checkpoint + \
         shutdown, sled flush + drop,\n  fjall persist(SyncAll) + drop, redb Durability::Immediate \
         commit + close), shown alone as durable s;\n  latencies are per op (the \
         durable point excluded; mean = sum of op latencies / ops, so it shows stalls that\n  the percentiles hide); dev B/logical B = /proc/self/io write_bytes over the timed \
         phase / key+value bytes written;\n  disk = allocated size after the durable point; \
         peak RSS = VmHWM of the run's own process; check = store reopened and every key compared.\n",
    );
    if !notes.is_empty() {
        text.push_str("notes:\n");
        for (w, note, targets) in notes {
            let ran = out.runs.iter().filter(|r| r.workload == w).count();
            if targets.len() == ran {
                let _ = writeln!(text, "  - {w}: {note}");
            } else {
                let _ = writeln!(text, "  - {w} on {}: {note}", targets.join(", "));
            }
        }
    }
    let failures: Vec<&RunReport> = out
        .runs
        .iter()
        .filter(|r| r.status == Status::Failed)
        .collect();
    if !failures.is_empty() {
        text.push_str("FAILURES:\n");
        for r in failures {
            let _ = writeln!(
                text,
                "  {} on {}: {}",
                r.workload,
                r.target,
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
    fn numbers_are_formatted_for_people() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1_000), "1,000");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_ns(850), "850 ns");
        assert_eq!(fmt_ns(12_345), "12.3 µs");
        assert_eq!(fmt_ns(4_560_000), "4.56 ms");
        assert_eq!(fmt_ns(1_230_000_000), "1.23 s");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(45 << 20), "45.0 MiB");
        assert_eq!(fmt_ratio(12.34), "12.3x");
        assert_eq!(fmt_ratio(0.456), "0.46x");
        assert_eq!(fmt_ratio(f64::NAN), "-");
    }

    #[test]
    fn tables_align_their_columns() {
        let mut t = Table::new(&[("name", false), ("ops/s", true)]);
        t.row(vec!["sessions".into(), "1,234".into()]);
        t.row(vec!["µ".into(), "5".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "name      ops/s",
                "--------  -----",
                "sessions  1,234",
                "µ             5",
            ]
        );
    }

    fn run(workload: &str, target: TargetKind, ops_per_sec: f64, write_bytes: u64) -> RunReport {
        RunReport {
            workload: workload.into(),
            target: target.name().into(),
            description: "test shape".into(),
            threads: 2,
            ops: 1000,
            logical_bytes: 1000,
            total_secs: 1.0,
            ops_per_sec,
            p99_ns: 1000,
            write_bytes,
            verified_keys: 10,
            ..RunReport::default()
        }
    }

    #[test]
    fn the_report_shows_ratios_failures_and_runs_not_run() {
        let mut failed = run("journal", TargetKind::Sled, 1.0, 1);
        failed.status = Status::Failed;
        failed.error = Some("verification failed: 3 of 10 keys differ".into());
        let out = BenchOutput {
            command: "millpond bench".into(),
            scale: 1.0,
            seed: 1,
            write_delay_ms: 500,
            flush_threads: 2,
            wall_secs: 3.0,
            runs: vec![
                RunReport {
                    notes: vec!["everywhere".into()],
                    ..run("sessions", TargetKind::Millpond, 1000.0, 100)
                },
                RunReport {
                    notes: vec!["everywhere".into()],
                    ..run("sessions", TargetKind::Sled, 100.0, 2000)
                },
                RunReport {
                    notes: vec!["per target".into(), "everywhere".into()],
                    ..run("sessions", TargetKind::InMemory, 4000.0, 0)
                },
                run("reads", TargetKind::Millpond, 500.0, 0),
                run("reads", TargetKind::Sled, 1000.0, 4096),
                failed,
                RunReport::not_run(
                    WorkloadKind::TtlChurn,
                    TargetKind::Millpond,
                    "an op the store cannot do",
                ),
                RunReport::not_run(
                    WorkloadKind::TtlChurn,
                    TargetKind::Sled,
                    "an op the store cannot do",
                ),
            ],
        };
        let text = render(&out);
        let speed = text
            .split("throughput")
            .nth(1)
            .and_then(|t| t.lines().find(|l| l.starts_with("sessions")))
            .expect("a throughput ratio line");
        assert_eq!(
            speed.split_whitespace().collect::<Vec<_>>(),
            ["sessions", "10.0x", "0.25x"],
            "{text}"
        );
        let bytes = text
            .lines()
            .find(|l| l.starts_with("sessions") && l.contains("fewer"))
            .expect("a device bytes ratio line");
        assert!(bytes.contains("0.05x (20.0x fewer)"), "{bytes}");
        // A workload that writes nothing, and a peer that did not run it.
        let reads: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("reads ") && !l.contains("ok ("))
            .collect();
        assert_eq!(
            reads[0].split_whitespace().collect::<Vec<_>>(),
            ["reads", "0.50x", "-"],
            "{text}"
        );
        assert!(reads[1].ends_with("0 B vs 4.0 KiB"), "{text}");
        // The in-memory map writes nothing: no bytes column for it.
        let headers: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| l.starts_with("workload ") && !l.contains("thr"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            headers[..2],
            [
                vec!["workload", "sled", "in-memory"],
                vec!["workload", "sled"]
            ],
            "{text}"
        );
        assert_eq!(
            text.matches("not run: an op the store cannot do").count(),
            1
        );
        assert!(text.contains("ttl-churn  all"));
        assert!(text.contains("FAILURES:"));
        assert!(text.contains("journal on sled: verification failed"));
        assert!(text.contains("ok (10 keys)"));
        assert!(text.contains("  - sessions: everywhere\n"), "{text}");
        assert!(
            text.contains("  - sessions on in-memory: per target\n"),
            "{text}"
        );
        // Round trip through JSON, as between child and parent.
        let json = serde_json::to_string(&out.runs[0]).unwrap();
        let back: RunReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.ops_per_sec, 1000.0);
        assert_eq!(back.status, Status::Ok);
    }
}
