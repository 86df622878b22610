//! Workloads run in a child process that the test then kills (SIGKILL,
//! `tests/crash.rs`) or cuts the power under (`tests/power.rs`), and the
//! checks made on the store afterwards.
//!
//! A test binary re-runs itself as the child: its `#[test] fn child()` calls
//! [`child_main`], which does nothing unless the `MILLPOND_CHILD_*`
//! environment says it is a child. The child reports on stdout, one line
//! each: `ready`, `checkpoint <n>` (a checkpoint that returned `Ok`, `n`
//! being what it covers), and mode-specific lines.
//!
//! Modes:
//! - `history`: a deterministic sequence of sets, deletes and `modify`
//!   increments (a function of the seed), checkpointing now and then; `n` is
//!   the number of operations before the checkpoint. The state after any
//!   prefix is known, so a recovered store can be checked to be one point in
//!   the history ([`matching_prefix`]).
//! - `bank`: two threads move money between accounts in transactions, each
//!   balance kept twice (inline and in a 2 KiB blob); `n` counts transfers.
//! - `flushed`: writes, waits until the engine reports them flushed, prints
//!   `flushed <n>`.
//! - `shutdown`: a history prefix, then `shutdown()`, then `shutdown <n>`.
//! - `fsync-fail`: writes and checkpoints, prints `armed`, waits for a line on
//!   stdin (the parent makes the next fsync fail; `go-late` makes the child
//!   wait 1.2 s first, so that sled's own flusher meets the failure), then
//!   checks that the failed checkpoint is reported and new writes are
//!   refused.
//! - `sled-flush`, `sled-fsync`: raw sled inserting keys 0, 1, ... with
//!   `flush()` (and, for `sled-fsync`, fsync of every file and directory) as
//!   the checkpoint; the controls of the power-cut trials.
//! - `journal-process`, `journal-power`, `journal-periodic-<ms>`,
//!   `journal-off`: the history, opened with that [`Journal`] mode, some of
//!   its operations grouped into transactions ([`group_len`]); after each
//!   operation or transaction returns, `acked <n> <unix millis>` (`n`
//!   operations done). With `Periodic`, also `synced <n>` once the journal
//!   has certainly synced the first `n` operations ([`journal_child`]).
//!   The store is checked with [`recovered_point`].
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use millpond::{Config, Engine, Error, Journal};

use super::{u64_value, Rng, HANG_LIMIT};

pub const KEYS: u64 = 48;
pub const OPS: u64 = 200_000;
pub const ACCOUNTS: u64 = 12;
pub const INITIAL: u64 = 1000;

/// One step of the history.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Set(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Increment the counter under this key.
    Increment(Vec<u8>),
    /// Give the key's value (if any) a deadline a day away: a change of
    /// its metadata only, the value unchanged.
    Expire(Vec<u8>),
}

pub fn value_for(i: u64, key: u64) -> Vec<u8> {
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

pub fn op(seed: u64, i: u64) -> Op {
    let mut rng = Rng::new(seed ^ i.wrapping_mul(0x9E37_79B9));
    let key = rng.below(KEYS);
    let k = format!("key-{key:02}").into_bytes();
    match rng.below(10) {
        0 => Op::Delete(k),
        1 | 2 => Op::Increment(format!("counter-{}", key % 4).into_bytes()),
        3 => Op::Expire(k),
        _ => Op::Set(k, value_for(i, key)),
    }
}

impl Op {
    /// The key the operation writes.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Set(k, _) | Op::Delete(k) | Op::Increment(k) | Op::Expire(k) => k,
        }
    }
}

/// Applies `op` to `model` and keeps `bad`, the number of keys where
/// `model` and `recovered` differ, exact.
fn advance(
    model: &mut HashMap<Vec<u8>, Vec<u8>>,
    recovered: &HashMap<Vec<u8>, Vec<u8>>,
    op: &Op,
    bad: &mut usize,
) {
    let k = op.key();
    let was = model.get(k) != recovered.get(k);
    apply(model, op);
    let is = model.get(k) != recovered.get(k);
    *bad = *bad + usize::from(is) - usize::from(was);
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
            let n = model.get(k).map_or(0, |v| u64_value(v));
            model.insert(k.clone(), (n + 1).to_le_bytes().to_vec());
        }
        Op::Expire(_) => {}
    }
}

fn all_keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|k| format!("key-{k:02}").into_bytes())
        .collect();
    keys.extend((0..4).map(|c| format!("counter-{c}").into_bytes()));
    keys
}

/// Reads every key the history touches.
pub fn read_all(e: &Engine) -> HashMap<Vec<u8>, Vec<u8>> {
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
pub fn matching_prefix(seed: u64, recovered: &HashMap<Vec<u8>, Vec<u8>>, from: u64) -> Option<u64> {
    let mut model = HashMap::new();
    let mut bad: usize = all_keys()
        .iter()
        .filter(|k| model.get(*k) != recovered.get(*k))
        .count();
    for n in 0..=OPS {
        if n >= from && bad == 0 {
            return Some(n);
        }
        if n == OPS {
            break;
        }
        advance(&mut model, recovered, &op(seed, n), &mut bad);
    }
    None
}

/// The point in the history of the `journal-*` children a recovered state
/// is: the largest end of a group ([`group_len`]), at most `to`, after which
/// the history's state equals `recovered`; `None` if there is none (a
/// transaction half applied, a write from nowhere, or an older write
/// reappearing).
pub fn recovered_point(seed: u64, recovered: &HashMap<Vec<u8>, Vec<u8>>, to: u64) -> Option<u64> {
    let mut model = HashMap::new();
    let mut bad: usize = all_keys()
        .iter()
        .filter(|k| model.get(*k) != recovered.get(*k))
        .count();
    let mut found = None;
    let mut group_end = 0;
    let mut n = 0;
    loop {
        if n == group_end {
            if bad == 0 {
                found = Some(n);
            }
            if n >= to || n == OPS {
                return found;
            }
            group_end += group_len(seed, n);
        }
        advance(&mut model, recovered, &op(seed, n), &mut bad);
        n += 1;
    }
}

/// Asserts that the store holds the history's state after some prefix of at
/// least `checkpoint` operations (one point in history, none of it lost);
/// returns the prefix length.
pub fn assert_one_point_in_history(e: &Engine, seed: u64, checkpoint: u64, what: &str) -> u64 {
    let n = matching_prefix(seed, &read_all(e), checkpoint);
    eprintln!("{what}: last checkpoint {checkpoint}, recovered prefix {n:?}");
    n.unwrap_or_else(|| {
        panic!(
            "{what}: the recovered state is not the state after any prefix of at least \
             {checkpoint} operations"
        )
    })
}

/// Reopens the store of a `journal-*` trial at `path` with `journal` and
/// returns the point in history it recovered ([`recovered_point`], up to
/// the end of the group after the last one the child acknowledged: that
/// one may have been journaled and not yet printed), `None` if it is none.
/// Then shuts the engine down, opens the store once more without a journal
/// and checks it still holds the same (what `open` replayed was made
/// durable in the store, and the journal it left is consistent with it).
pub fn check_journal_trial(
    path: &Path,
    journal: Journal,
    seed: u64,
    t: &Trial,
    what: &str,
) -> Option<u64> {
    let open = |journal| {
        Engine::open(Config::new(path).journal(journal))
            .unwrap_or_else(|err| panic!("{what}: reopen with {journal:?} failed: {err}"))
    };
    let segments = std::fs::read_dir(path.join("journal")).map_or(0, |d| d.count());
    let e = open(journal);
    let state = read_all(&e);
    let point = recovered_point(seed, &state, next_group_end(seed, t.acked));
    eprintln!(
        "{what}: reopened with {journal:?}, {} records replayed from {segments} segments; \
         acknowledged {}, last checkpoint {}, synced {}, recovered point {point:?}",
        e.stats().journal_replayed,
        t.acked,
        t.checkpoint,
        t.synced
    );
    e.shutdown()
        .unwrap_or_else(|err| panic!("{what}: shutdown after reopen failed: {err}"));
    let again = open(Journal::Off);
    assert!(
        read_all(&again) == state,
        "{what}: the second reopen does not hold what the first recovered"
    );
    again.shutdown().unwrap();
    point
}

pub fn account(i: u64) -> Vec<u8> {
    format!("account-{i:02}").into_bytes()
}

/// A 2 KiB record (a blob) kept beside each balance, holding the same
/// number: a transaction half applied would show them disagreeing.
pub fn history(i: u64) -> Vec<u8> {
    format!("history-{i:02}").into_bytes()
}

pub fn history_value(balance: u64) -> Vec<u8> {
    balance.to_le_bytes().repeat(256)
}

/// Checks a recovered bank: every balance agrees with its history record
/// and the total is intact. Returns the transfers counted.
pub fn check_bank(e: &Engine, what: &str) -> u64 {
    let (sum, transfers) = e
        .transaction(|tx| {
            let mut sum = 0;
            for i in 0..ACCOUNTS {
                let balance = u64_value(&tx.get(&account(i))?.expect("an account"));
                let history = tx.get(&history(i))?.expect("a history record");
                assert_eq!(
                    history.to_vec(),
                    history_value(balance),
                    "{what}: account {i} and its history disagree: a transaction was split"
                );
                sum += balance;
            }
            Ok((sum, u64_value(&tx.get(b"transfers")?.expect("a counter"))))
        })
        .unwrap();
    assert_eq!(
        sum,
        ACCOUNTS * INITIAL,
        "{what}: money appeared or vanished"
    );
    transfers
}

/// What the parent tells the child.
pub struct Spec<'a> {
    /// Name of the child's `#[test]` function in this binary.
    pub test: &'a str,
    pub store: &'a Path,
    pub seed: u64,
    pub mode: &'a str,
    /// The engine's write delay; random (1-30 ms) if `None`.
    pub write_delay_ms: Option<u64>,
    /// A failpoint, `name=actions` (feature `failpoints`).
    pub point: Option<&'a str>,
}

/// A running child.
pub struct Trial {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// The last `checkpoint <n>` seen.
    pub checkpoint: u64,
    /// Every `event ...` line and every `acked ...` line not naming a count
    /// (the `watched` and `synced` modes).
    pub log: Vec<String>,
    /// The last `acked <n> ...` seen (the journal modes): operations
    /// acknowledged.
    pub acked: u64,
    /// Every `acked <n> <unix millis>`: when each count was acknowledged.
    pub ack_times: Vec<(u64, u64)>,
    /// The last `synced <n>` seen (`journal-periodic-*`).
    pub synced: u64,
}

pub fn spawn(spec: Spec<'_>) -> Trial {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", spec.test, "--nocapture", "--test-threads=1"])
        .env("MILLPOND_CHILD_DIR", spec.store)
        .env("MILLPOND_CHILD_SEED", spec.seed.to_string())
        .env("MILLPOND_CHILD_MODE", spec.mode);
    if let Some(ms) = spec.write_delay_ms {
        command.env("MILLPOND_CHILD_DELAY_MS", ms.to_string());
    }
    if let Some(point) = spec.point {
        command.env("MILLPOND_CHILD_POINT", point);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stdin = child.stdin.take();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        // Only whole lines: a child killed halfway through printing one
        // (its last) did not say what the line would have said.
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdout.read_until(b'\n', &mut line) {
                Ok(_) if line.last() == Some(&b'\n') => {
                    line.pop();
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if tx.send(text).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
    Trial {
        child,
        stdin,
        lines,
        checkpoint: 0,
        log: Vec::new(),
        acked: 0,
        ack_times: Vec::new(),
        synced: 0,
    }
}

impl Trial {
    fn note(&mut self, line: &str) {
        if let Some(n) = line.strip_prefix("checkpoint ") {
            self.checkpoint = n.parse().unwrap();
        }
        if let Some(n) = line.strip_prefix("synced ") {
            self.synced = n.parse().unwrap();
        }
        if let Some(rest) = line.strip_prefix("acked ") {
            let mut fields = rest.split(' ');
            if let Some(n) = fields.next().and_then(|f| f.parse().ok()) {
                self.acked = n;
                if let Some(ms) = fields.next().and_then(|f| f.parse().ok()) {
                    self.ack_times.push((n, ms));
                }
                return;
            }
        }
        if line.starts_with("event ") || line.starts_with("acked ") {
            self.log.push(line.to_string());
        }
    }

    /// Waits until the child has acknowledged at least `n` operations (the
    /// journal modes).
    pub fn wait_for_acked(&mut self, n: u64) {
        while self.acked < n {
            self.wait_for("acked ");
        }
    }

    /// Unix millis of the first acknowledgement of more than `n`
    /// operations, if the child printed one.
    pub fn acked_after(&self, n: u64) -> Option<u64> {
        let i = self.ack_times.partition_point(|&(m, _)| m <= n);
        self.ack_times.get(i).map(|&(_, ms)| ms)
    }

    /// Waits for a line starting with `prefix` (keeping the last checkpoint
    /// seen on the way).
    pub fn wait_for(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the child never printed {prefix:?}"));
            self.note(&line);
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Waits for a line starting with any of `prefixes`.
    pub fn wait_for_any(&mut self, prefixes: &[&str]) -> String {
        loop {
            let line = self.wait_for("");
            if prefixes.iter().any(|p| line.starts_with(p)) {
                return line;
            }
        }
    }

    /// Sends a line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Collects every line the (dead) child printed, up to the end of its
    /// output: the reader thread may still be behind, however long ago the
    /// child died.
    fn drain(&mut self) {
        let deadline = Instant::now() + HANG_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.note(&line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the dead child's output never ended")
                }
            }
        }
    }

    /// Kills the child, then collects what it printed before dying.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
        self.drain();
    }

    /// Waits (up to [`HANG_LIMIT`]) for the child to die by itself; kills it
    /// otherwise. Returns whether it died by itself, unsuccessfully.
    pub fn wait_for_crash(&mut self) -> bool {
        let deadline = Instant::now() + HANG_LIMIT;
        let crashed = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break !status.success();
            }
            if Instant::now() > deadline {
                self.kill();
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        self.drain();
        crashed
    }
}

impl Drop for Trial {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Trials to run: `MILLPOND_<what>_TRIALS`, else `default`.
pub fn trials(what: &str, default: u64) -> u64 {
    std::env::var(format!("MILLPOND_{what}_TRIALS"))
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// In a child (the `MILLPOND_CHILD_*` environment is set): runs the
/// workload, never returning. Otherwise returns at once.
pub fn child_main() {
    let (Ok(dir), Ok(seed), Ok(mode)) = (
        std::env::var("MILLPOND_CHILD_DIR"),
        std::env::var("MILLPOND_CHILD_SEED"),
        std::env::var("MILLPOND_CHILD_MODE"),
    ) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let seed: u64 = seed.parse().unwrap();
    #[cfg(feature = "failpoints")]
    if let Ok(point) = std::env::var("MILLPOND_CHILD_POINT") {
        let (name, actions) = point.split_once('=').unwrap();
        fail::cfg(name, actions).unwrap();
    }
    // The test harness has printed "test child ... " without a newline.
    println!();
    match mode.as_str() {
        "sled-flush" => sled_child(&dir, false),
        "sled-fsync" => sled_child(&dir, true),
        _ => {}
    }
    let mut rng = Rng::new(seed);
    let delay = std::env::var("MILLPOND_CHILD_DELAY_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| 1 + rng.below(30));
    let journal = journal_of(&mode);
    let e = Engine::open(
        Config::new(&dir)
            .inline_threshold(super::BLOB_OVER)
            .write_delay(Duration::from_millis(delay))
            .max_dirty_bytes(1 << 20)
            .flush_threads(1 + rng.below(2) as usize)
            .journal(match mode.as_str() {
                "expire-blob" => Journal::Power,
                _ => journal.unwrap_or(Journal::Off),
            }),
    )
    .unwrap();
    println!("ready");
    if let Some(journal) = journal {
        journal_child(&e, seed, &mut rng, journal);
    } else {
        match mode.as_str() {
            "bank" => bank_child(&e, seed),
            "flushed" => flushed_child(&e, &mut rng),
            "shutdown" => shutdown_child(e, seed, &mut rng),
            "fsync-fail" => fsync_fail_child(&e, seed),
            "watched" => watched_child(&e, rng.next()),
            "synced" => synced_child(&e),
            "expire-blob" => expire_blob_child(&e),
            _ => history_child(&e, seed, &mut rng),
        }
    }
    // Wait to be killed.
    std::thread::sleep(Duration::from_secs(600));
    std::process::exit(0);
}

/// `expire-blob` (with `Journal::Power`): sets `blob-0` to a long value
/// (a blob), waits until a flush cycle committed it (flushed, not synced:
/// no checkpoint ever runs), then gives it a deadline with `expire`, whose
/// journal record is synced before it returns, and prints `expired 0`.
/// After a power cut the value must read back whole: the blob the cycle
/// wrote may be gone with the cycle, so the journal must not hold a mere
/// pointer to it.
fn expire_blob_child(e: &Engine) {
    let key = b"blob-0";
    let value = value_for(0, 0).repeat(2);
    assert!(value.len() > super::BLOB_OVER);
    e.set(key, &value).unwrap();
    let seq = e.stats().last_seq;
    let patience = super::Patience::new("the cycle that writes the blob");
    while e.stats().flushed_seq < seq {
        patience.check();
        std::thread::sleep(Duration::from_millis(1));
    }
    e.expire(key, EXPIRE_TTL).unwrap();
    println!("expired 0");
}

fn run_op(e: &Engine, op: Op) -> millpond::Result<()> {
    match op {
        Op::Set(k, v) => e.set(&k, &v),
        Op::Delete(k) => e.delete(&k).map(drop),
        Op::Increment(k) => e.modify(&k, |v| {
            let n = v.as_deref().map_or(0, u64_value);
            *v = Some((n + 1).to_le_bytes().to_vec());
        }),
        Op::Expire(k) => e.expire(&k, EXPIRE_TTL).map(drop),
    }
}

/// The deadline `Op::Expire` gives: far beyond any run.
const EXPIRE_TTL: Duration = Duration::from_secs(86_400);

fn history_child(e: &Engine, seed: u64, rng: &mut Rng) {
    let checkpoint_every = 200 + rng.below(2000);
    for i in 0..OPS {
        if run_op(e, op(seed, i)).is_err() {
            return; // The disk went away (a power cut): wait to be killed.
        }
        if (i + 1) % checkpoint_every == 0 {
            if e.checkpoint().is_err() {
                return;
            }
            println!("checkpoint {}", i + 1);
        }
    }
    if e.checkpoint().is_ok() {
        println!("checkpoint {OPS}");
    }
}

/// The journal mode a `journal-*` child opens with; `None` for the other
/// modes.
pub fn journal_of(mode: &str) -> Option<Journal> {
    let name = mode.strip_prefix("journal-")?;
    Some(match name {
        "off" => Journal::Off,
        "process" => Journal::Process,
        "power" => Journal::Power,
        _ => {
            let ms = name
                .strip_prefix("periodic-")
                .and_then(|ms| ms.parse().ok())
                .unwrap_or_else(|| panic!("unknown journal mode {mode:?}"));
            Journal::Periodic(Duration::from_millis(ms))
        }
    })
}

/// How many operations the journal children do as one, starting at
/// operation `i`: mostly 1 (a plain `set`, `delete` or `modify`), now and
/// then a transaction of 2 to 5. The history's state is checked only
/// between groups ([`recovered_point`]), so a transaction half applied is
/// not one point in it.
pub fn group_len(seed: u64, i: u64) -> u64 {
    let mut rng = Rng::new(seed ^ 0x6A09_E667 ^ i.wrapping_mul(0xC2B2_AE3D));
    let len = if rng.below(8) == 0 {
        2 + rng.below(4)
    } else {
        1
    };
    len.min(OPS - i)
}

/// The end of the group after `n` operations (`n` is the end of one).
pub fn next_group_end(seed: u64, n: u64) -> u64 {
    n + group_len(seed, n.min(OPS - 1))
}

fn run_group(e: &Engine, seed: u64, from: u64, len: u64) -> millpond::Result<()> {
    if len == 1 {
        return run_op(e, op(seed, from));
    }
    e.transaction(|tx| {
        for i in from..from + len {
            match op(seed, i) {
                Op::Set(k, v) => tx.set(&k, &v)?,
                Op::Delete(k) => drop(tx.delete(&k)?),
                Op::Increment(k) => tx.modify(&k, |v| {
                    let n = v.as_deref().map_or(0, u64_value);
                    *v = Some((n + 1).to_le_bytes().to_vec());
                })?,
                Op::Expire(k) => {
                    if let Some(v) = tx.get(&k)? {
                        tx.set_with_ttl(&k, &v, EXPIRE_TTL)?;
                    }
                }
            }
        }
        Ok(())
    })
}

/// Writes the journal children's history (in groups) in this process until
/// at least `ops` operations are done; returns how many were.
pub fn write_history(e: &Engine, seed: u64, ops: u64) -> u64 {
    let mut i = 0;
    while i < ops {
        let len = group_len(seed, i);
        run_group(e, seed, i, len).unwrap();
        i += len;
    }
    i
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `journal-*` child: the history in groups ([`group_len`]), printing
/// `acked <n> <unix millis>` as each group returns (`println!` writes the
/// whole line before the next operation starts), checkpointing now and
/// then or never.
///
/// With `Periodic`, also `synced <n>` once the first `n` operations are
/// certainly on the device, found without timing: after the group ending at
/// `n` returned, the count of completed journal syncs is read (`s`); the
/// sync that completes as `s + 1` may have taken its records before that
/// group's record was appended, but the journal's syncs run one at a time,
/// so the one completing as `s + 2` began after `s + 1` ended, after the
/// group returned: once the count reaches `s + 2`, the group's record was
/// fdatasynced. The child keeps, for each count it read, the last `n` it
/// read it after, and prints the largest `n` whose count is 2 behind.
fn journal_child(e: &Engine, seed: u64, rng: &mut Rng, journal: Journal) {
    // Half the children never checkpoint: then the journal alone keeps
    // what no cycle made durable, across several segments once they grow
    // past one (cycles become durable by themselves only when it passes
    // `journal::SYNC_AFTER_BYTES`).
    let checkpoint_every = if rng.below(2) == 0 {
        OPS
    } else {
        500 + rng.below(5000)
    };
    let periodic = matches!(journal, Journal::Periodic(_));
    let mut watched: std::collections::VecDeque<(u64, u64)> = Default::default();
    let mut last_checkpoint = 0;
    let mut i = 0;
    while i < OPS {
        let len = group_len(seed, i);
        if run_group(e, seed, i, len).is_err() {
            return; // The disk went away (a power cut): wait to be killed.
        }
        i += len;
        println!("acked {i} {}", unix_millis());
        if periodic {
            let syncs = e.stats().journal_file_syncs;
            match watched.back_mut() {
                Some((n, s)) if *s == syncs => *n = i,
                _ => watched.push_back((i, syncs)),
            }
            let mut synced = None;
            while let Some(&(n, _)) = watched.front().filter(|(_, s)| s + 2 <= syncs) {
                synced = Some(n);
                watched.pop_front();
            }
            if let Some(n) = synced {
                println!("synced {n}");
            }
        }
        if i - last_checkpoint >= checkpoint_every {
            if e.checkpoint().is_err() {
                return;
            }
            last_checkpoint = i;
            println!("checkpoint {i}");
        }
    }
}

fn flushed_child(e: &Engine, rng: &mut Rng) {
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
}

/// Key `w-<k>` of the `watched` and `synced` modes.
pub fn watched_key(k: u64) -> Vec<u8> {
    format!("w-{k}").into_bytes()
}

/// Keys of the `watched` and `synced` modes.
pub const WATCHED_KEYS: u64 = 8;

/// Prints `event <durability> <key> <counter or "removed">` for every event
/// a subscriber gets, as it gets it (stdout is line-buffered: each line is
/// in the pipe before the next event is read).
fn print_events(e: &Engine, durability: millpond::Durability, name: &'static str) {
    let sub = e.watch_prefix(b"w-", durability).unwrap();
    std::thread::spawn(move || {
        for ev in sub {
            if let Some(missed) = ev.lagged() {
                println!("lagged {missed}");
                continue;
            }
            let key = String::from_utf8_lossy(ev.key()).into_owned();
            match ev.value() {
                Some(v) => println!("event {name} {key} {}", u64_value(v)),
                None => println!("event {name} {key} removed"),
            }
        }
    });
}

/// The `watched` child: a Flushed and a Synced subscriber print every event;
/// the main thread sets `w-<k>` to increasing counters (never deleting, so
/// a key's value only grows), asks for `Flushed` or `Synced` on some writes
/// and checkpoints on others.
fn watched_child(e: &Engine, seed: u64) {
    print_events(e, millpond::Durability::Flushed, "flushed");
    print_events(e, millpond::Durability::Synced, "synced");
    let mut rng = Rng::new(seed);
    for i in 1..OPS {
        let k = watched_key(rng.below(WATCHED_KEYS));
        let done = match rng.below(100) {
            5 => e.set_with(&k, &i.to_le_bytes(), millpond::Durability::Flushed),
            6 => e.set_with(&k, &i.to_le_bytes(), millpond::Durability::Synced),
            7 => e.checkpoint().map(drop),
            _ => e.set(&k, &i.to_le_bytes()),
        };
        if done.is_err() {
            return;
        }
    }
}

/// The `synced` child: four threads write `s-<t>-<i>` with
/// `Durability::Synced` and print `acked s-<t>-<i>` once each returned; a
/// Synced subscriber of `w-` prints its events while a fifth thread sets
/// `w-<k>` to increasing counters.
fn synced_child(e: &Engine) {
    print_events(e, millpond::Durability::Synced, "synced");
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                for i in 0..OPS {
                    let k = format!("s-{t}-{i}");
                    if e.set_with(k.as_bytes(), b"v", millpond::Durability::Synced)
                        .is_err()
                    {
                        return;
                    }
                    println!("acked {k}");
                }
            })
        })
        .collect();
    for i in 1..OPS {
        if e.set(&watched_key(i % WATCHED_KEYS), &i.to_le_bytes())
            .is_err()
        {
            break;
        }
    }
    for w in writers {
        let _ = w.join();
    }
}

/// Checks a store recovered after the `watched` or `synced` child died
/// against the events its subscribers printed: no event of a change that is
/// gone. The children never delete and each key's counters only grow, so
/// the recovered value of a key must be at or past the highest counter any
/// event showed for it. Returns the events checked.
pub fn check_events(e: &Engine, log: &[String], what: &str) -> usize {
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut events = 0;
    for line in log.iter().filter(|l| l.starts_with("event ")) {
        let parts: Vec<&str> = line.split(' ').collect();
        let [_, _, key, v] = parts[..] else {
            panic!("{what}: a torn event line {line:?}");
        };
        let v: u64 = v
            .parse()
            .unwrap_or_else(|_| panic!("{what}: an unexpected event {line:?}"));
        events += 1;
        let max = seen.entry(key.to_string()).or_insert(0);
        *max = (*max).max(v);
    }
    for (key, s) in &seen {
        let got = e.get(key.as_bytes()).unwrap().map(|v| u64_value(&v));
        assert!(
            got.is_some_and(|g| g >= *s),
            "{what}: a watcher saw {key} = {s}, the recovered store has {got:?}"
        );
    }
    events
}

fn shutdown_child(e: Engine, seed: u64, rng: &mut Rng) {
    let n = 1000 + rng.below(20_000);
    for i in 0..n {
        run_op(&e, op(seed, i)).unwrap();
    }
    e.shutdown().unwrap();
    println!("shutdown {n}");
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
    println!("checkpoint 0");
    for t in 0..2 {
        let e = e.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed ^ (t + 7));
            loop {
                let from = rng.below(ACCOUNTS);
                let to = (from + 1 + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
                let amount = 1 + rng.below(30);
                let done = e.transaction(|tx| {
                    let get = |tx: &mut millpond::Transaction<'_>, k: &[u8]| {
                        tx.get(k).map(|v| u64_value(&v.expect("a key")))
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
                });
                if done.is_err() {
                    return; // The disk went away: wait to be killed.
                }
            }
        });
    }
    let mut rng = Rng::new(seed);
    loop {
        std::thread::sleep(Duration::from_millis(rng.below(20)));
        let Ok(Some(counted)) = e.get(b"transfers") else {
            return;
        };
        if e.checkpoint().is_err() {
            return;
        }
        println!("checkpoint {}", u64_value(&counted));
    }
}

fn fsync_fail_child(e: &Engine, seed: u64) {
    for i in 0..500 {
        run_op(e, op(seed, i)).unwrap();
    }
    e.checkpoint().unwrap();
    println!("checkpoint 500");
    println!("armed");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    if line.trim() == "go-late" {
        // Long enough for sled's own flusher thread (every 500 ms) to fsync
        // `db` first and be the one that gets the error.
        std::thread::sleep(Duration::from_millis(1200));
    }
    for i in 500..1000 {
        run_op(e, op(seed, i)).unwrap();
    }
    match e.checkpoint() {
        Ok(cp) => println!("unexpected: the checkpoint succeeded: {cp:?}"),
        Err(err) => println!("checkpoint-failed {err}"),
    }
    match e.set(b"after", b"the failure") {
        Err(Error::Poisoned { .. }) => println!("writes-refused"),
        other => println!("unexpected: a write after the failure returned {other:?}"),
    }
    match e.checkpoint() {
        Err(Error::Poisoned { .. }) => println!("checkpoints-refused"),
        other => println!("unexpected: a checkpoint after the failure returned {other:?}"),
    }
}

fn sled_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

/// Raw sled (default configuration: its background flusher also fsyncs
/// `db` every 500 ms): inserts keys 0, 1, ...; every 50 keys `flush()` (and
/// with `fsync`, fsync of every file and directory), then `checkpoint <n>`.
fn sled_child(dir: &Path, fsync: bool) {
    let db = super::open_raw_sled(dir);
    // Both controls make the new store itself durable once, so that what
    // the flush-only control loses is down to `flush()` alone.
    db.flush().unwrap();
    fsync_store(dir).unwrap();
    println!("ready");
    for i in 0.. {
        if db.insert(sled_key(i), i.to_le_bytes().repeat(8)).is_err() {
            break;
        }
        if (i + 1) % 50 == 0 {
            if db.flush().is_err() || (fsync && fsync_store(dir).is_err()) {
                break;
            }
            println!("checkpoint {}", i + 1);
        }
    }
    std::thread::sleep(Duration::from_secs(600));
    std::process::exit(0);
}

/// fsync of every file and directory of a store, and of the directory that
/// holds it (a new directory's entry is durable only once its parent is
/// fsynced).
pub fn fsync_store(dir: &Path) -> std::io::Result<()> {
    fsync_tree(dir)?;
    match dir.parent() {
        Some(parent) => std::fs::File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// fsync of every file under `dir`, then of every directory.
pub fn fsync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            fsync_tree(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// How many of keys `0..n` a raw sled store holds.
pub fn sled_keys_present(dir: &Path, n: u64) -> u64 {
    let db = super::open_raw_sled(dir);
    (0..n)
        .filter(|i| db.get(sled_key(*i)).unwrap().is_some())
        .count() as u64
}
