//! `demo`: the README's main job. A web-framework session-state workload
//! from several threads: most requests update a session (read-modify-write),
//! some create one, some log out (delete), a few only read. Then it
//! checkpoints, shuts down, reopens the store, checks every session against
//! what the threads expect, runs `verify`, and prints what it did and how
//! fast. Every run uses fresh keys (prefixed with the run's start time), so
//! the same store can be used again.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use millpond::{Config, Engine};

/// `millpond demo [DIR]`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The store directory (created if missing; reused across runs).
    #[arg(default_value = "millpond-demo-data")]
    pub dir: PathBuf,
}

const THREADS: u64 = 4;
const SESSIONS_PER_THREAD: u64 = 2_500;
const REQUESTS_PER_THREAD: u64 = 250_000;

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Skewed towards small numbers: a few sessions are very active.
    fn skewed(&mut self, n: u64) -> u64 {
        let a = self.next() % n;
        let b = self.next() % n;
        a.min(b)
    }
}

/// A session record: a header the demo checks, then padding that stands for
/// the rest of the session state (1-4 KiB in all).
fn session_value(session: u64, version: u64, len: usize) -> Vec<u8> {
    let mut v = format!("session={session};version={version};").into_bytes();
    v.resize(len, b'.');
    v
}

fn version_of(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let start = text.find("version=")? + "version=".len();
    let end = start + text[start..].find(';')?;
    text[start..end].parse().ok()
}

struct ThreadReport {
    requests: u64,
    writes: u64,
    /// Final expected state of this thread's sessions (None: logged out).
    expected: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

fn run_thread(
    engine: Engine,
    run: u64,
    t: u64,
    progress: ProgressBar,
) -> millpond::Result<ThreadReport> {
    let mut rng = Rng((run ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
    let mut expected: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut writes = 0;
    let key = |s: u64| format!("run-{run}/thread-{t}/session-{s}").into_bytes();
    for i in 0..REQUESTS_PER_THREAD {
        if i % 10_000 == 0 {
            progress.inc(10_000);
        }
        let s = rng.skewed(SESSIONS_PER_THREAD);
        let k = key(s);
        match rng.next() % 100 {
            // Log out.
            0..=1 => {
                engine.delete(&k)?;
                expected.insert(k, None);
                writes += 1;
            }
            // Read only.
            2..=11 => {
                let got = engine.get(&k)?;
                let want = expected.get(&k).cloned().flatten();
                assert_eq!(got.map(|v| v.to_vec()), want, "read-your-writes");
            }
            // Update (or create) the session.
            _ => {
                let len = 1024 + (rng.next() % 3072) as usize;
                let new = engine.modify(&k, |v| {
                    let version = v.as_deref().and_then(version_of).map_or(1, |n| n + 1);
                    let value = session_value(s, version, len);
                    *v = Some(value.clone());
                    value
                })?;
                expected.insert(k, Some(new));
                writes += 1;
            }
        }
    }
    Ok(ThreadReport {
        requests: REQUESTS_PER_THREAD,
        writes,
        expected,
    })
}

pub fn demo(args: DemoArgs) -> Result<ExitCode> {
    let dir = args.dir;
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let config = || Config::new(&dir).write_delay(Duration::from_millis(500));

    println!("millpond demo: session state from {THREADS} threads");
    println!("store: {}", dir.display());
    let opened = Instant::now();
    let engine = Engine::open(config())?;
    let open_took = opened.elapsed();

    let progress = if std::io::stdout().is_terminal() {
        let bar = ProgressBar::new(THREADS * REQUESTS_PER_THREAD);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} requests {per_sec} {elapsed}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let e = engine.clone();
            let progress = progress.clone();
            std::thread::spawn(move || run_thread(e, run, t, progress))
        })
        .collect();
    let mut reports = Vec::new();
    for h in handles {
        reports.push(
            h.join()
                .map_err(|_| anyhow!("a worker thread panicked"))??,
        );
    }
    progress.finish_and_clear();
    let busy = started.elapsed();
    let checkpoint = engine.checkpoint()?;
    let stats = engine.stats();
    let shut = Instant::now();
    engine.shutdown()?;
    let shutdown_took = shut.elapsed();
    drop(engine);

    let reopened = Instant::now();
    let engine = Engine::open(config())?;
    let reopen_took = reopened.elapsed();
    let mut checked = 0;
    let mut live = 0;
    for r in &reports {
        for (k, want) in &r.expected {
            let got = engine.get(k)?.map(|v| v.to_vec());
            if &got != want {
                bail!(
                    "verification failed for {}: the store disagrees with what was written",
                    String::from_utf8_lossy(k)
                );
            }
            checked += 1;
            live += usize::from(want.is_some());
        }
    }
    let report = engine.verify()?;
    engine.shutdown()?;
    if !report.is_clean() {
        bail!("verify found problems: {:?}", report.problems);
    }

    let requests: u64 = reports.iter().map(|r| r.requests).sum();
    let writes: u64 = reports.iter().map(|r| r.writes).sum();
    let secs = busy.as_secs_f64();
    println!();
    println!(
        "{:<22}{:>14}  ({:.0}/s)",
        "requests",
        requests,
        requests as f64 / secs
    );
    println!(
        "{:<22}{:>14}  ({:.0}/s)",
        "writes",
        writes,
        writes as f64 / secs
    );
    println!(
        "{:<22}{:>14}  ({:.1}% never reached disk)",
        "coalesced writes",
        stats.coalesced_writes,
        100.0 * stats.coalesced_writes as f64 / stats.writes.max(1) as f64
    );
    println!("{:<22}{:>14}", "flush cycles", stats.flushes);
    println!("{:<22}{:>14}", "entries flushed", stats.flushed_entries);
    println!("{:<22}{:>14.2?}", "open", open_took);
    println!("{:<22}{:>14.2?}", "workload", busy);
    println!("{:<22}{:>14.2?}", "final checkpoint", checkpoint.duration);
    println!("{:<22}{:>14.2?}", "shutdown", shutdown_took);
    println!("{:<22}{:>14.2?}", "reopen", reopen_took);
    println!(
        "{:<22}{:>14}  ({live} live, {} logged out): all match",
        "verified sessions",
        checked,
        checked - live
    );
    println!(
        "{:<22}{:>14}  ({} keys, {} problems)",
        "verify",
        "clean",
        report.records,
        report.problems.len()
    );
    Ok(ExitCode::SUCCESS)
}
