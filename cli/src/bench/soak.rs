//! `millpond bench --soak DURATION`: a long run of the sessions workload
//! (Zipf-skewed `modify` of 10,000 values of 2-8 KiB from 2 threads, with a
//! checkpoint every 10 s) that watches for stalls.
//!
//! A watchdog (the main thread) looks every 250 ms at what the run is
//! doing. It declares a **stall** when anything takes longer than
//! `--stall-after` (30 s by default): a single op (in flight or finished),
//! a checkpoint (the store's durable point: millpond `checkpoint`, sled
//! `flush`, ...), the final close, and for millpond a flush cycle (a
//! finished one, by `Stats::last_flush_duration`; one in flight, by
//! `Stats::flushes` not moving while entries are dirty). It prints progress
//! every 10 s. At the end the store is closed, reopened and every key
//! compared with what the run wrote.
//!
//! On a stall it prints the reason and exits with status 1 at once, leaving
//! the store on disk for inspection: the stuck threads cannot be joined (sled 0.34 is known to deadlock under
//! write load; see `/work/shared/sled-facts.md`), so nothing after it runs.

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::report::{fmt_bytes, fmt_count};
use super::targets::{FjallTarget, MemoryTarget, MillpondTarget, RedbTarget, SledTarget};
use super::targets::{Target, TargetKind, Tuning};
use super::workloads::{hash3, permutation, Params, Rng, Sessions, Zipf};

/// A duration on the command line: `10m`, `90s`, `1h30m`, `500ms`, or a
/// plain number of seconds (`45`, `2.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoakDuration(pub Duration);

impl FromStr for SoakDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<SoakDuration, String> {
        let text = s.trim();
        let bad = || format!("`{s}` is not a duration (examples: 10m, 90s, 1h30m, 45)");
        if text.is_empty() {
            return Err(bad());
        }
        let number = |n: &str| -> Result<f64, String> {
            let v: f64 = n.parse().map_err(|_| bad())?;
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(bad())
            }
        };
        let secs = if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            number(text)?
        } else {
            let mut total = 0.0;
            let mut rest = text;
            while !rest.is_empty() {
                let digits = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .ok_or_else(bad)?;
                if digits == 0 {
                    return Err(bad());
                }
                let value = number(&rest[..digits])?;
                rest = &rest[digits..];
                let unit_len = rest
                    .find(|c: char| c.is_ascii_digit() || c == '.')
                    .unwrap_or(rest.len());
                let scale = match &rest[..unit_len] {
                    "h" => 3600.0,
                    "m" | "min" => 60.0,
                    "s" => 1.0,
                    "ms" => 0.001,
                    _ => return Err(bad()),
                };
                total += value * scale;
                rest = &rest[unit_len..];
            }
            total
        };
        if secs <= 0.0 || secs > 1e9 {
            return Err(format!("`{s}`: a duration must be above zero"));
        }
        Ok(SoakDuration(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for SoakDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&fmt_duration(self.0))
    }
}

/// `10m0s`, `1h2m3s`, `45s`, `2.5s`, `250ms`: hours and minutes when
/// there are any, then seconds (tenths when not whole).
pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let whole = d.as_secs();
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    let tenths = d.subsec_millis() / 100;
    let secs = if tenths > 0 {
        format!("{s}.{tenths}s")
    } else {
        format!("{s}s")
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// How long anything may take before it is a stall, unless
/// `--stall-after` says otherwise.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// What `--soak` needs from the command line.
pub struct SoakArgs {
    pub duration: Duration,
    pub stall_after: Duration,
    pub targets: Vec<TargetKind>,
    pub dir: std::path::PathBuf,
    pub keep: bool,
    pub tuning: Tuning,
    pub seed: u64,
}

/// Runs the soak against each target in turn. Exits the process with
/// status 1 on a stall.
pub fn run(args: &SoakArgs) -> Result<ExitCode> {
    let mut failed = false;
    for &target in &args.targets {
        let dir = args.dir.join(format!("soak-{}", target.name()));
        let outcome = match target {
            TargetKind::Millpond => soak::<MillpondTarget>(args, target, &dir),
            TargetKind::Sled => soak::<SledTarget>(args, target, &dir),
            TargetKind::Fjall => soak::<FjallTarget>(args, target, &dir),
            TargetKind::Redb => soak::<RedbTarget>(args, target, &dir),
            TargetKind::InMemory => soak::<MemoryTarget>(args, target, &dir),
        };
        if let Err(e) = outcome {
            println!("soak{}: FAILED: {e:#}", label(target));
            failed = true;
        }
        if !args.keep {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", dir.display()))
                }
                _ => {}
            }
        }
    }
    if args.keep {
        eprintln!("stores kept in {}", args.dir.display());
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `""` for millpond (the verdict line the issue asks for), ` (sled)` for
/// the others.
fn label(target: TargetKind) -> String {
    match target {
        TargetKind::Millpond => String::new(),
        t => format!(" ({t})"),
    }
}

/// Nanoseconds since the soak started, plus one (0: nothing in flight).
type Mark = AtomicU64;

/// What the run's threads publish for the watchdog.
#[derive(Default)]
struct Progress {
    /// Per worker: when its op in flight started (0: none).
    op_started: Vec<Mark>,
    ops: AtomicU64,
    longest_op_ns: AtomicU64,
    /// When the checkpoint (or the final close) in flight started.
    checkpoint_started: Mark,
    checkpoints: AtomicU64,
    longest_checkpoint_ns: AtomicU64,
    /// The final close, reopen and check are running.
    closing: AtomicBool,
}

impl Progress {
    fn new(workers: usize) -> Progress {
        Progress {
            op_started: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            ..Progress::default()
        }
    }
}

/// What the watchdog has seen so far.
#[derive(Debug, Default, Clone)]
struct Watch {
    /// millpond's `write_delay`: with entries dirty, a cycle starts at
    /// least this often, so a cycle in flight is a stall once the flush
    /// count has not moved for `write_delay` + the limit.
    write_delay: Duration,
    longest_cycle: Duration,
    flushes: u64,
    /// When `flushes` last moved, or entries were last seen clean.
    flush_moved: Duration,
}

/// What the watchdog sees at one moment (for [`check`]).
struct Sample {
    now: Duration,
    /// Per op and the checkpoint in flight: how long it has been running.
    ops_in_flight: Vec<Duration>,
    checkpoint_in_flight: Option<Duration>,
    longest_op: Duration,
    longest_checkpoint: Duration,
    /// millpond's counters.
    engine: Option<(u64, usize, Option<Duration>)>,
}

/// Updates `w` with `s`; the reason for a stall, if there is one.
fn check(w: &mut Watch, s: &Sample, limit: Duration) -> Option<String> {
    for (i, &d) in s.ops_in_flight.iter().enumerate() {
        if d > limit {
            return Some(format!(
                "an op of worker {i} has been in flight for {}",
                fmt_duration(d)
            ));
        }
    }
    if s.longest_op > limit {
        return Some(format!("an op took {}", fmt_duration(s.longest_op)));
    }
    if let Some(d) = s.checkpoint_in_flight.filter(|&d| d > limit) {
        return Some(format!(
            "a checkpoint (or the final close) has been in flight for {}",
            fmt_duration(d)
        ));
    }
    if s.longest_checkpoint > limit {
        return Some(format!(
            "a checkpoint took {}",
            fmt_duration(s.longest_checkpoint)
        ));
    }
    if let Some((flushes, dirty, last)) = s.engine {
        if let Some(last) = last {
            w.longest_cycle = w.longest_cycle.max(last);
            if last > limit {
                return Some(format!("a flush cycle took {}", fmt_duration(last)));
            }
        }
        if flushes != w.flushes || dirty == 0 {
            w.flushes = flushes;
            w.flush_moved = s.now;
        } else if s.now.saturating_sub(w.flush_moved) > limit + w.write_delay {
            return Some(format!(
                "no flush cycle finished for {} with {dirty} entries dirty",
                fmt_duration(s.now - w.flush_moved)
            ));
        }
    }
    None
}

/// The run's threads: two workers and a checkpointer.
struct Run<T> {
    target: Arc<T>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    started: Instant,
    workers: Vec<JoinHandle<Result<Vec<u32>>>>,
    checkpointer: Option<JoinHandle<Result<()>>>,
}

fn since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

fn mark_since(mark: &Mark, started: Instant) -> Option<Duration> {
    match mark.load(Ordering::Relaxed) {
        0 => None,
        at => Some(
            started
                .elapsed()
                .saturating_sub(Duration::from_nanos(at - 1)),
        ),
    }
}

const WORKERS: usize = 2;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(250);

fn soak<T: Target + Send + 'static>(args: &SoakArgs, kind: TargetKind, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let sessions = Sessions::new(Params {
        scale: 1.0,
        seed: args.seed,
    });
    let keys = Sessions::KEYS;
    let t = T::open(dir, &args.tuning)?;
    for i in 0..keys {
        t.set(&Sessions::key(i), &sessions.initial(i))?;
    }
    t.sync().context("the durable point after preloading")?;
    println!(
        "soak{}: {} of the sessions workload ({keys} keys of 2-8 KiB, modify, Zipf s=0.99, \
         {WORKERS} threads, a checkpoint every {}), stall = anything over {}",
        label(kind),
        fmt_duration(args.duration),
        fmt_duration(CHECKPOINT_EVERY),
        fmt_duration(args.stall_after),
    );
    let _ = std::io::stdout().flush();

    let started = Instant::now();
    let run = start::<T>(t, args.seed, started)?;
    let progress = Arc::clone(&run.progress);
    // Weak: the driver takes the store back to close it once the run has
    // stopped (and this thread has stopped looking at its counters).
    let target = Arc::downgrade(&run.target);
    // The driver: waits out the duration, stops the threads, closes,
    // reopens and checks, while this thread watches.
    let (done_tx, done) = mpsc::channel();
    let (duration, tuning, seed) = (args.duration, args.tuning, args.seed);
    let dir_owned = dir.to_path_buf();
    std::thread::Builder::new()
        .name("soak-driver".into())
        .spawn(move || {
            let r = finish::<T>(run, duration, &dir_owned, &tuning, seed);
            let _ = done_tx.send(r);
        })
        .context("starting the soak driver thread")?;

    let mut watch = Watch {
        write_delay: args.tuning.write_delay,
        ..Watch::default()
    };
    let mut next_progress = PROGRESS_EVERY;
    let limit = args.stall_after;
    let outcome = loop {
        match done.recv_timeout(TICK) {
            Ok(r) => break r,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(anyhow!("the soak driver thread panicked"))
            }
        }
        let closing = progress.closing.load(Ordering::Relaxed);
        let engine = if closing {
            None
        } else {
            target.upgrade().and_then(|t| t.engine_stats())
        };
        let sample = Sample {
            now: started.elapsed(),
            ops_in_flight: progress
                .op_started
                .iter()
                .filter_map(|m| mark_since(m, started))
                .collect(),
            checkpoint_in_flight: mark_since(&progress.checkpoint_started, started),
            longest_op: Duration::from_nanos(progress.longest_op_ns.load(Ordering::Relaxed)),
            longest_checkpoint: Duration::from_nanos(
                progress.longest_checkpoint_ns.load(Ordering::Relaxed),
            ),
            engine: engine
                .as_ref()
                .map(|s| (s.flushes, s.dirty_entries, s.last_flush_duration)),
        };
        if let Some(reason) = check(&mut watch, &sample, limit) {
            println!(
                "soak{}: STALL after {}: {reason} (limit {}); {} ops done; the store is left in {}",
                label(kind),
                fmt_duration(sample.now),
                fmt_duration(limit),
                fmt_count(progress.ops.load(Ordering::Relaxed)),
                dir.display(),
            );
            let _ = std::io::stdout().flush();
            // The stuck threads cannot be joined: exit from here.
            std::process::exit(1);
        }
        if sample.now >= next_progress && !closing {
            next_progress += PROGRESS_EVERY;
            let ops = progress.ops.load(Ordering::Relaxed);
            let mut line = format!(
                "soak{} {}: {} ops ({}/s)",
                label(kind),
                fmt_duration(Duration::from_secs(sample.now.as_secs())),
                fmt_count(ops),
                fmt_count((ops as f64 / sample.now.as_secs_f64()) as u64),
            );
            if let Some(s) = &engine {
                line += &format!(
                    ", {} flushes, {} dirty, longest cycle {}",
                    fmt_count(s.flushes),
                    fmt_bytes(s.dirty_bytes as u64),
                    fmt_secs(watch.longest_cycle),
                );
            }
            line += &format!(
                ", longest op {}, {} checkpoints",
                fmt_secs(sample.longest_op),
                progress.checkpoints.load(Ordering::Relaxed),
            );
            if progress.checkpoints.load(Ordering::Relaxed) > 0 {
                line += &format!(" (longest {})", fmt_secs(sample.longest_checkpoint));
            }
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
    };
    let end = outcome?;
    let mut verdict = format!(
        "soak{}: no stall in {}: {} ops",
        label(kind),
        fmt_duration(args.duration),
        fmt_count(end.ops)
    );
    if let Some(flushes) = end.flushes {
        verdict += &format!(
            ", {} flushes, longest cycle {}",
            fmt_count(flushes),
            fmt_secs(watch.longest_cycle)
        );
    }
    verdict += &format!(
        "; longest op {}, {} checkpoints",
        fmt_secs(end.longest_op),
        end.checkpoints
    );
    if end.checkpoints > 0 {
        verdict += &format!(" (longest {})", fmt_secs(end.longest_checkpoint));
    }
    verdict += &format!(
        ", final close {}; {} keys checked after reopening",
        fmt_secs(end.close),
        fmt_count(end.checked),
    );
    println!("{verdict}");
    Ok(())
}

/// `1.23 s`, `12.3 µs`, `45.0 s`, `125 s`.
fn fmt_secs(d: Duration) -> String {
    match u32::try_from(d.as_nanos()) {
        Ok(ns) => super::report::fmt_ns(ns),
        Err(_) if d < Duration::from_secs(100) => format!("{:.1} s", d.as_secs_f64()),
        Err(_) => format!("{} s", d.as_secs()),
    }
}

/// Starts the workers and the checkpointer on `t`.
fn start<T: Target + Send + 'static>(t: T, seed: u64, started: Instant) -> Result<Run<T>> {
    let target = Arc::new(t);
    let progress = Arc::new(Progress::new(WORKERS));
    let stop = Arc::new(AtomicBool::new(false));
    let keys = Sessions::KEYS;
    let zipf = Arc::new(Zipf::new(keys, 0.99));
    let perm = Arc::new(permutation(keys, hash3(seed, 3, 0)));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (t, p, stop) = (
            Arc::clone(&target),
            Arc::clone(&progress),
            Arc::clone(&stop),
        );
        let (zipf, perm) = (Arc::clone(&zipf), Arc::clone(&perm));
        let handle = std::thread::Builder::new()
            .name(format!("soak-worker-{w}"))
            .spawn(move || -> Result<Vec<u32>> {
                let mut rng = Rng::new(hash3(seed, 4, w as u64));
                let mut counts = vec![0u32; keys];
                while !stop.load(Ordering::Relaxed) {
                    let i = perm[zipf.sample(&mut rng)] as usize;
                    let key = Sessions::key(i);
                    p.op_started[w].store(since(started), Ordering::Relaxed);
                    let op = Instant::now();
                    let found = t.modify(&key, |v| {
                        v.as_mut().map(|v| Sessions::update(seed, i, v)).is_some()
                    })?;
                    let ns = u64::try_from(op.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    p.op_started[w].store(0, Ordering::Relaxed);
                    p.longest_op_ns.fetch_max(ns, Ordering::Relaxed);
                    p.ops.fetch_add(1, Ordering::Relaxed);
                    if !found {
                        bail!("session {i} is missing");
                    }
                    counts[i] += 1;
                }
                Ok(counts)
            })
            .context("starting a soak worker")?;
        workers.push(handle);
    }
    let (t, p, halt) = (
        Arc::clone(&target),
        Arc::clone(&progress),
        Arc::clone(&stop),
    );
    let checkpointer = std::thread::Builder::new()
        .name("soak-checkpoint".into())
        .spawn(move || -> Result<()> {
            let mut next = CHECKPOINT_EVERY;
            while !halt.load(Ordering::Relaxed) {
                if started.elapsed() < next {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                next += CHECKPOINT_EVERY;
                p.checkpoint_started
                    .store(since(started), Ordering::Relaxed);
                let at = Instant::now();
                t.sync().context("a checkpoint during the soak")?;
                let ns = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                p.checkpoint_started.store(0, Ordering::Relaxed);
                p.longest_checkpoint_ns.fetch_max(ns, Ordering::Relaxed);
                p.checkpoints.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .context("starting the soak checkpointer")?;
    Ok(Run {
        target,
        progress,
        stop,
        started,
        workers,
        checkpointer: Some(checkpointer),
    })
}

/// The figures of a soak that ended without a stall.
struct End {
    ops: u64,
    flushes: Option<u64>,
    longest_op: Duration,
    checkpoints: u64,
    longest_checkpoint: Duration,
    close: Duration,
    checked: u64,
}

/// Waits out `duration`, stops the threads, closes (the final durable
/// point, watched as a checkpoint), reopens and checks every key.
fn finish<T: Target + Send + 'static>(
    mut run: Run<T>,
    duration: Duration,
    dir: &Path,
    tuning: &Tuning,
    seed: u64,
) -> Result<End> {
    while run.started.elapsed() < duration {
        let left = duration.saturating_sub(run.started.elapsed());
        std::thread::sleep(left.min(Duration::from_millis(100)));
        if run.workers.iter().any(JoinHandle::is_finished) {
            break; // a worker failed: collect its error below
        }
    }
    run.stop.store(true, Ordering::Relaxed);
    let mut counts = vec![0u32; Sessions::KEYS];
    for w in run.workers.drain(..) {
        let mine = w.join().map_err(|_| anyhow!("a soak worker panicked"))??;
        for (c, m) in counts.iter_mut().zip(mine) {
            *c += m;
        }
    }
    if let Some(c) = run.checkpointer.take() {
        c.join()
            .map_err(|_| anyhow!("the soak checkpointer panicked"))??;
    }
    let p = &run.progress;
    let flushes = run.target.engine_stats().map(|s| s.flushes);
    p.closing.store(true, Ordering::Relaxed);
    p.checkpoint_started
        .store(since(run.started), Ordering::Relaxed);
    let at = Instant::now();
    // The watchdog may be reading the counters this instant; it stops now.
    let mut shared = run.target;
    let t = loop {
        match Arc::try_unwrap(shared) {
            Ok(t) => break t,
            Err(again) => {
                shared = again;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let closed = t.close().context("the final durable point")?;
    let close = at.elapsed();
    let t = T::reopen(dir, tuning, closed.handle).context("reopening the store to check it")?;
    p.checkpoint_started.store(0, Ordering::Relaxed);
    let sessions = Sessions::new(Params { scale: 1.0, seed });
    let mut wrong = Vec::new();
    for (i, &n) in counts.iter().enumerate() {
        let mut want = sessions.initial(i);
        for _ in 0..n {
            Sessions::update(seed, i, &mut want);
        }
        let found = t.get(&Sessions::key(i))?;
        if found.as_ref().map(AsRef::as_ref) != Some(&want[..]) {
            wrong.push(i);
        }
    }
    t.close().context("closing the store after checking it")?;
    if !wrong.is_empty() {
        bail!(
            "after reopening, {} of {} sessions differ from what the soak wrote (first: {})",
            wrong.len(),
            counts.len(),
            wrong[0]
        );
    }
    Ok(End {
        ops: p.ops.load(Ordering::Relaxed),
        flushes,
        longest_op: Duration::from_nanos(p.longest_op_ns.load(Ordering::Relaxed)),
        checkpoints: p.checkpoints.load(Ordering::Relaxed),
        longest_checkpoint: Duration::from_nanos(p.longest_checkpoint_ns.load(Ordering::Relaxed)),
        close,
        checked: counts.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Duration, String> {
        s.parse::<SoakDuration>().map(|d| d.0)
    }

    #[test]
    fn durations_parse_in_the_usual_units() {
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse(" 2min "), Ok(Duration::from_secs(120)));
        for bad in [
            "", "0", "0s", "m", "10x", "-5", "1.2.3s", "s10", "10m5", "nan",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn durations_print_like_the_verdict_wants() {
        let d = |s| fmt_duration(Duration::from_secs_f64(s));
        assert_eq!(d(600.0), "10m0s");
        assert_eq!(d(60.0), "1m0s");
        assert_eq!(d(45.0), "45s");
        assert_eq!(d(3723.0), "1h2m3s");
        assert_eq!(d(2.5), "2.5s");
        assert_eq!(d(0.25), "250ms");
        assert_eq!(SoakDuration(Duration::from_secs(600)).to_string(), "10m0s");
    }

    fn sample(now: u64) -> Sample {
        Sample {
            now: Duration::from_secs(now),
            ops_in_flight: vec![],
            checkpoint_in_flight: None,
            longest_op: Duration::from_millis(5),
            longest_checkpoint: Duration::from_millis(300),
            engine: Some((now, 10, Some(Duration::from_millis(200)))),
        }
    }

    #[test]
    fn the_watchdog_sees_every_kind_of_stall() {
        let limit = Duration::from_secs(30);
        let mut w = Watch::default();
        for now in 0..100 {
            assert_eq!(check(&mut w, &sample(now), limit), None);
        }
        assert_eq!(w.longest_cycle, Duration::from_millis(200));

        let stalled = |s: Sample| check(&mut Watch::default(), &s, limit).unwrap();
        let s = Sample {
            ops_in_flight: vec![Duration::from_secs(1), Duration::from_secs(31)],
            ..sample(40)
        };
        assert!(stalled(s).contains("worker 1 has been in flight for 31s"));
        let s = Sample {
            longest_op: Duration::from_secs(45),
            ..sample(50)
        };
        assert!(stalled(s).contains("an op took 45s"));
        let s = Sample {
            checkpoint_in_flight: Some(Duration::from_secs(32)),
            ..sample(50)
        };
        assert!(stalled(s).contains("checkpoint"));
        let s = Sample {
            longest_checkpoint: Duration::from_secs(33),
            ..sample(50)
        };
        assert!(stalled(s).contains("a checkpoint took 33s"));
        let s = Sample {
            engine: Some((3, 10, Some(Duration::from_secs(34)))),
            ..sample(50)
        };
        assert!(stalled(s).contains("a flush cycle took 34s"));

        // A cycle in flight: the flush count stops moving while entries
        // are dirty.
        let mut w = Watch::default();
        let stuck = |now| Sample {
            engine: Some((7, 10, Some(Duration::from_millis(200)))),
            ..sample(now)
        };
        for now in 0..=30 {
            assert_eq!(check(&mut w, &stuck(now), limit), None, "at {now} s");
        }
        let reason = check(&mut w, &stuck(31), limit).unwrap();
        assert!(
            reason.contains("no flush cycle finished for 31s"),
            "{reason}"
        );
        // ... allowing for a long write_delay.
        let mut w = Watch {
            write_delay: Duration::from_secs(60),
            ..Watch::default()
        };
        for now in 0..=90 {
            assert_eq!(check(&mut w, &stuck(now), limit), None, "at {now} s");
        }
        assert!(check(&mut w, &stuck(91), limit).is_some());
        // Nothing dirty: nothing to flush, no stall.
        let mut w = Watch::default();
        for now in 0..100 {
            let idle = Sample {
                engine: Some((7, 0, None)),
                ..sample(now)
            };
            assert_eq!(check(&mut w, &idle, limit), None);
        }
        // Stores without engine counters: ops and checkpoints only.
        let mut w = Watch::default();
        let sled = Sample {
            engine: None,
            ..sample(1000)
        };
        assert_eq!(check(&mut w, &sled, limit), None);
    }

    #[test]
    fn a_short_soak_runs_and_checks_its_store() {
        let tmp = tempfile::Builder::new()
            .prefix("millpond-soak-test-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().join("soak");
        let args = SoakArgs {
            duration: Duration::from_millis(1500),
            stall_after: Duration::from_secs(30),
            targets: vec![TargetKind::Millpond, TargetKind::InMemory],
            dir: dir.clone(),
            keep: false,
            tuning: Tuning {
                write_delay: Duration::from_millis(50),
                max_dirty_bytes: Some(64 << 20),
                flush_threads: 1,
                inline_threshold: None,
                compression: None,
            },
            seed: 1,
        };
        assert_eq!(run(&args).unwrap(), ExitCode::SUCCESS);
    }
}
