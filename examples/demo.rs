//! The demo workload: web-framework session state, from several threads.
//!
//! `cargo run --release --example demo [DIR]` (default DIR:
//! `./millpond-demo-data`). Each thread plays a stream of requests against
//! its sessions: most update a session (read-modify-write), some create a new
//! one, some log a session out (delete), a few only read. Then the demo
//! checkpoints, shuts down, reopens the store, checks every session against
//! what the threads expect, and prints what it did and how fast.
//!
//! Every run uses fresh keys (prefixed with the run's start time), so the
//! same store can be used again.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use millpond::{Config, Engine};

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

fn run_thread(engine: Engine, run: u64, t: u64) -> millpond::Result<ThreadReport> {
    let mut rng = Rng((run ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
    let mut expected: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut writes = 0;
    let key = |s: u64| format!("run-{run}/thread-{t}/session-{s}").into_bytes();
    for _ in 0..REQUESTS_PER_THREAD {
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "millpond-demo-data".into());
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let config = || Config::new(&dir).write_delay(Duration::from_millis(500));

    println!("millpond demo: session state from {THREADS} threads");
    println!("store: {dir}");
    let opened = Instant::now();
    let engine = Engine::open(config())?;
    println!("opened in {:.1?}", opened.elapsed());

    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let e = engine.clone();
            std::thread::spawn(move || run_thread(e, run, t))
        })
        .collect();
    let mut reports = Vec::new();
    for h in handles {
        reports.push(h.join().map_err(|_| "a worker thread panicked")??);
    }
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
                return Err(format!(
                    "verification failed for {}: the store disagrees with what was written",
                    String::from_utf8_lossy(k)
                )
                .into());
            }
            checked += 1;
            live += usize::from(want.is_some());
        }
    }
    engine.shutdown()?;

    let requests: u64 = reports.iter().map(|r| r.requests).sum();
    let writes: u64 = reports.iter().map(|r| r.writes).sum();
    let secs = busy.as_secs_f64();
    println!();
    println!(
        "requests            {requests:>12}  ({:.0}/s)",
        requests as f64 / secs
    );
    println!(
        "writes              {writes:>12}  ({:.0}/s)",
        writes as f64 / secs
    );
    println!(
        "coalesced writes    {:>12}  ({:.1}% never reached disk)",
        stats.coalesced_writes,
        100.0 * stats.coalesced_writes as f64 / stats.writes.max(1) as f64
    );
    println!("flush cycles        {:>12}", stats.flushes);
    println!("entries flushed     {:>12}", stats.flushed_entries);
    println!("values in blob tree {:>12}", stats.blobs_written);
    println!("workload time       {:>12.2?}", busy);
    println!("final checkpoint    {:>12.2?}", checkpoint.duration);
    println!("shutdown            {:>12.2?}", shutdown_took);
    println!("reopen              {:>12.2?}", reopen_took);
    println!(
        "verified sessions   {checked:>12}  ({live} live, {} logged out): all match",
        checked - live
    );
    Ok(())
}
