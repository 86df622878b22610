//! Crash consistency (guarantee 5): the test binary re-runs itself as a child
//! that writes, and the parent kills it with SIGKILL at a random moment,
//! reopens the store and checks it.
//!
//! The child applies a deterministic sequence of operations (a function of
//! the seed), so the state after any prefix of it is known. After the kill
//! the recovered store must equal the state after *some* prefix (one point in
//! history), no shorter than the last checkpoint the child reported, with
//! every value readable (no record without its blob, no checksum failure).
//!
//! Trials: `MILLPOND_CRASH_TRIALS` (default 8); seed: `MILLPOND_SEED`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Rng, Store};
use millpond::{Config, Engine};

const KEYS: u64 = 48;
const OPS: u64 = 200_000;

/// One step of the child's history.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Set(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Increment the counter under this key.
    Increment(Vec<u8>),
}

fn value_for(i: u64, key: u64) -> Vec<u8> {
    // Every fifth value is long enough for the blob tree.
    let len = if i % 5 == 0 { 3000 } else { 24 };
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        v.extend_from_slice(&i.to_le_bytes());
        v.extend_from_slice(&key.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn op(seed: u64, i: u64) -> Op {
    let mut rng = Rng::new(seed ^ i.wrapping_mul(0x9E37_79B9));
    let key = rng.below(KEYS);
    let k = format!("key-{key:02}").into_bytes();
    match rng.below(10) {
        0 => Op::Delete(k),
        1 | 2 => Op::Increment(format!("counter-{}", key % 4).into_bytes()),
        _ => Op::Set(k, value_for(i, key)),
    }
}

fn apply(model: &mut HashMap<Vec<u8>, Vec<u8>>, op: &Op) {
    match op {
        Op::Set(k, v) => {
            model.insert(k.clone(), v.clone());
        }
        Op::Delete(k) => {
            model.remove(k);
        }
        Op::Increment(k) => {
            let n = model.get(k).map_or(0, |v| common::u64_value(v));
            model.insert(k.clone(), (n + 1).to_le_bytes().to_vec());
        }
    }
}

fn all_keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|k| format!("key-{k:02}").into_bytes())
        .collect();
    keys.extend((0..4).map(|c| format!("counter-{c}").into_bytes()));
    keys
}

/// The child: runs the history, checkpointing now and then, and reports
/// each completed checkpoint as `checkpoint <ops done before it>`.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(seed)) = (
        std::env::var("MILLPOND_CRASH_DIR"),
        std::env::var("MILLPOND_CRASH_SEED"),
    ) else {
        return; // Not a child: nothing to do.
    };
    let seed: u64 = seed.parse().unwrap();
    let mode = std::env::var("MILLPOND_CRASH_MODE").unwrap_or_default();
    #[cfg(feature = "failpoints")]
    if let Ok(point) = std::env::var("MILLPOND_CRASH_POINT") {
        let (name, actions) = point.split_once('=').unwrap();
        fail::cfg(name, actions).unwrap();
    }
    let mut rng = Rng::new(seed);
    let delay = Duration::from_millis(1 + rng.below(30));
    let e = Engine::open(
        Config::new(&dir)
            .write_delay(delay)
            .max_dirty_bytes(1 << 20)
            .flush_threads(1 + rng.below(2) as usize),
    )
    .unwrap();
    // The test harness has printed "test crash_child ... " without a newline.
    println!("\nready");
    if mode == "bank" {
        bank_child(&e, seed);
        return;
    }
    if mode == "flushed" {
        let n = 1 + rng.below(200);
        for i in 0..n {
            e.set(format!("f-{i}").as_bytes(), &value_for(i, i))
                .unwrap();
        }
        let seq = e.stats().last_seq;
        while e.stats().flushed_seq < seq {
            std::thread::sleep(Duration::from_millis(1));
        }
        println!("flushed {n}");
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let checkpoint_every = 200 + rng.below(2000);
    for i in 0..OPS {
        match op(seed, i) {
            Op::Set(k, v) => e.set(&k, &v).unwrap(),
            Op::Delete(k) => {
                e.delete(&k).unwrap();
            }
            Op::Increment(k) => e
                .modify(&k, |v| {
                    let n = v.as_deref().map_or(0, common::u64_value);
                    *v = Some((n + 1).to_le_bytes().to_vec());
                })
                .unwrap(),
        }
        if (i + 1) % checkpoint_every == 0 {
            e.checkpoint().unwrap();
            println!("checkpoint {}", i + 1);
        }
    }
    e.checkpoint().unwrap();
    println!("checkpoint {OPS}");
    std::thread::sleep(Duration::from_secs(600));
}

const ACCOUNTS: u64 = 12;
const INITIAL: u64 = 1000;

fn account(i: u64) -> Vec<u8> {
    format!("account-{i:02}").into_bytes()
}

/// A 2 KiB record (a blob) kept beside each balance, holding the same
/// number: a transaction half applied would show them disagreeing.
fn history(i: u64) -> Vec<u8> {
    format!("history-{i:02}").into_bytes()
}

fn history_value(balance: u64) -> Vec<u8> {
    balance.to_le_bytes().repeat(256)
}

/// The bank child: two threads move money between accounts in
/// transactions, each also counting itself in `transfers`; the main thread
/// checkpoints and reports `checkpoint <transfers counted before it>`.
fn bank_child(e: &Engine, seed: u64) {
    e.transaction(|tx| {
        for i in 0..ACCOUNTS {
            tx.set(&account(i), &INITIAL.to_le_bytes())?;
            tx.set(&history(i), &history_value(INITIAL))?;
        }
        tx.set(b"transfers", &0u64.to_le_bytes())
    })
    .unwrap();
    e.checkpoint().unwrap();
    for t in 0..2 {
        let e = e.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed ^ (t + 7));
            loop {
                let from = rng.below(ACCOUNTS);
                let to = (from + 1 + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
                let amount = 1 + rng.below(30);
                e.transaction(|tx| {
                    let get = |tx: &mut millpond::Transaction<'_>, k: &[u8]| {
                        tx.get(k).map(|v| common::u64_value(&v.unwrap()))
                    };
                    let (a, b) = (get(tx, &account(from))?, get(tx, &account(to))?);
                    if a < amount {
                        return Ok(());
                    }
                    tx.set(&account(from), &(a - amount).to_le_bytes())?;
                    tx.set(&account(to), &(b + amount).to_le_bytes())?;
                    tx.set(&history(from), &history_value(a - amount))?;
                    tx.set(&history(to), &history_value(b + amount))?;
                    let n = get(tx, b"transfers")?;
                    tx.set(b"transfers", &(n + 1).to_le_bytes())
                })
                .unwrap();
            }
        });
    }
    let mut rng = Rng::new(seed);
    loop {
        std::thread::sleep(Duration::from_millis(rng.below(20)));
        let counted = common::u64_value(&e.get(b"transfers").unwrap().unwrap());
        e.checkpoint().unwrap();
        println!("checkpoint {counted}");
    }
}

struct Trial {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn spawn_child(dir: &Path, seed: u64, mode: &str) -> Trial {
    spawn_child_with(dir, seed, mode, None)
}

fn spawn_child_with(dir: &Path, seed: u64, mode: &str, point: Option<&str>) -> Trial {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("MILLPOND_CRASH_DIR", dir)
        .env("MILLPOND_CRASH_SEED", seed.to_string())
        .env("MILLPOND_CRASH_MODE", mode);
    if let Some(point) = point {
        command.env("MILLPOND_CRASH_POINT", point);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Trial { child, lines }
}

impl Trial {
    /// Waits for a line starting with `prefix`, keeping the last
    /// `checkpoint` seen.
    fn wait_for(&self, prefix: &str, checkpoint: &mut u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("child never printed {prefix:?}"));
            if let Some(n) = line.strip_prefix("checkpoint ") {
                *checkpoint = n.parse().unwrap();
            }
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Waits for the child to die by itself (a crash point), up to a limit,
    /// then kills it; returns whether it died by itself.
    #[cfg(feature = "failpoints")]
    fn wait_for_crash(mut self, checkpoint: &mut u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        let crashed = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break !status.success();
            }
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                self.child.wait().unwrap();
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        std::thread::sleep(Duration::from_millis(20));
        for line in self.lines.try_iter() {
            if let Some(n) = line.strip_prefix("checkpoint ") {
                *checkpoint = n.parse().unwrap();
            }
        }
        crashed
    }

    /// Kills the child, then collects what it printed before dying.
    fn kill(mut self, checkpoint: &mut u64) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        for line in self.lines.try_iter() {
            if let Some(n) = line.strip_prefix("checkpoint ") {
                *checkpoint = n.parse().unwrap();
            }
        }
    }
}

fn trials() -> u64 {
    std::env::var("MILLPOND_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// Reads every key the history touches.
fn read_all(e: &Engine) -> HashMap<Vec<u8>, Vec<u8>> {
    let mut state = HashMap::new();
    for k in all_keys() {
        let v = e
            .get(&k)
            .unwrap_or_else(|err| panic!("reading {k:?} after the crash failed: {err}"));
        if let Some(v) = v {
            state.insert(k, v.to_vec());
        }
    }
    state
}

/// The smallest prefix length `n >= from` whose state equals `recovered`.
fn matching_prefix(seed: u64, recovered: &HashMap<Vec<u8>, Vec<u8>>, from: u64) -> Option<u64> {
    let mut model = HashMap::new();
    let mismatched =
        |model: &HashMap<Vec<u8>, Vec<u8>>, k: &Vec<u8>| model.get(k) != recovered.get(k);
    let mut bad: usize = all_keys().iter().filter(|k| mismatched(&model, k)).count();
    for n in 0..=OPS {
        if n >= from && bad == 0 {
            return Some(n);
        }
        if n == OPS {
            break;
        }
        let o = op(seed, n);
        let k = match &o {
            Op::Set(k, _) | Op::Delete(k) | Op::Increment(k) => k.clone(),
        };
        let was = mismatched(&model, &k);
        apply(&mut model, &o);
        let is = mismatched(&model, &k);
        bad = bad + usize::from(is) - usize::from(was);
    }
    None
}

#[test]
fn killed_at_random_moments_recovers_one_point_in_history() {
    let seed = common::seed("crash");
    let mut rng = Rng::new(seed);
    for trial in 0..trials() {
        let store = Store::new();
        let child_seed = rng.next();
        let t = spawn_child(&store.path, child_seed, "history");
        let mut checkpoint = 0;
        t.wait_for("ready", &mut checkpoint);
        std::thread::sleep(Duration::from_millis(5 + rng.below(300)));
        t.kill(&mut checkpoint);

        let e = Engine::open(Config::new(&store.path)).unwrap_or_else(|err| {
            panic!("trial {trial} (child seed {child_seed}): reopen failed: {err}")
        });
        let recovered = read_all(&e);
        let n = matching_prefix(child_seed, &recovered, checkpoint);
        eprintln!(
            "trial {trial}: child seed {child_seed}, last checkpoint {checkpoint}, recovered prefix {n:?}"
        );
        assert!(
            n.is_some(),
            "trial {trial} (child seed {child_seed}): the recovered state is not the state \
             after any prefix of at least {checkpoint} operations"
        );
        e.shutdown().unwrap();
    }
}

#[test]
fn a_flushed_write_survives_sigkill() {
    let seed = common::seed("crash-flushed");
    let mut rng = Rng::new(seed);
    for _ in 0..3 {
        let store = Store::new();
        let child_seed = rng.next();
        let t = spawn_child(&store.path, child_seed, "flushed");
        let mut checkpoint = 0;
        let line = t.wait_for("flushed ", &mut checkpoint);
        let n: u64 = line["flushed ".len()..].parse().unwrap();
        t.kill(&mut checkpoint);
        let e = Engine::open(Config::new(&store.path)).unwrap();
        for i in 0..n {
            let got = e.get(format!("f-{i}").as_bytes()).unwrap();
            assert_eq!(got.unwrap(), value_for(i, i), "write {i} of {n}");
        }
    }
}

#[test]
fn killed_during_transactions_never_splits_one() {
    let seed = common::seed("crash-bank");
    let mut rng = Rng::new(seed);
    for trial in 0..trials() {
        let store = Store::new();
        let child_seed = rng.next();
        let t = spawn_child(&store.path, child_seed, "bank");
        let mut checkpoint = 0;
        t.wait_for("checkpoint", &mut checkpoint);
        std::thread::sleep(Duration::from_millis(5 + rng.below(300)));
        t.kill(&mut checkpoint);

        let e = Engine::open(Config::new(&store.path)).unwrap_or_else(|err| {
            panic!("trial {trial} (child seed {child_seed}): reopen failed: {err}")
        });
        let (sum, transfers) = e
            .transaction(|tx| {
                let mut sum = 0;
                for i in 0..ACCOUNTS {
                    let balance = common::u64_value(&tx.get(&account(i))?.unwrap());
                    let history = tx.get(&history(i))?.unwrap();
                    assert_eq!(
                        history.to_vec(),
                        history_value(balance),
                        "trial {trial} (child seed {child_seed}): account {i} and its history disagree"
                    );
                    sum += balance;
                }
                Ok((sum, common::u64_value(&tx.get(b"transfers")?.unwrap())))
            })
            .unwrap();
        eprintln!(
            "trial {trial}: child seed {child_seed}, last checkpoint {checkpoint}, recovered {transfers} transfers"
        );
        assert_eq!(
            sum,
            ACCOUNTS * INITIAL,
            "trial {trial} (child seed {child_seed})"
        );
        assert!(
            transfers >= checkpoint,
            "trial {trial} (child seed {child_seed}): lost transfers behind a checkpoint"
        );
        e.shutdown().unwrap();
    }
}

/// Crashes at exact points of a flush cycle (feature `failpoints`): the child
/// aborts at the N-th time it reaches the point, N random.
#[cfg(feature = "failpoints")]
#[test]
fn crashed_at_each_point_of_a_flush_cycle_recovers_one_point_in_history() {
    let seed = common::seed("crash-points");
    let mut rng = Rng::new(seed);
    let points = [
        "flush-before-blobs",
        "flush-before-commit",
        "flush-after-commit",
        "flush-before-sync",
    ];
    for point in points {
        for trial in 0..2 {
            let store = Store::new();
            let child_seed = rng.next();
            let skip = 1 + rng.below(20);
            let action = format!("{point}={skip}*off->return");
            let t = spawn_child_with(&store.path, child_seed, "history", Some(&action));
            let mut checkpoint = 0;
            t.wait_for("ready", &mut checkpoint);
            let crashed = t.wait_for_crash(&mut checkpoint);
            assert!(crashed, "{action}: the child never reached the crash point");
            let e = Engine::open(Config::new(&store.path)).unwrap_or_else(|err| {
                panic!("{action} (child seed {child_seed}): reopen failed: {err}")
            });
            let recovered = read_all(&e);
            let n = matching_prefix(child_seed, &recovered, checkpoint);
            eprintln!(
                "{action} trial {trial}: last checkpoint {checkpoint}, recovered prefix {n:?}"
            );
            assert!(
                n.is_some(),
                "{action} (child seed {child_seed}): not the state after any prefix of at least {checkpoint} operations"
            );
            e.shutdown().unwrap();
        }
    }
}
