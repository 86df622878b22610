//! The stores a workload runs against, behind one trait: millpond, raw sled
//! with the same staleness, two peers a Rust user might pick instead (fjall
//! 3, an LSM tree, and redb, a copy-on-write B-tree; see [`fjall`] and
//! [`redb`]), and an in-memory sharded map (the upper bound).
//!
//! A workload only uses the ops in [`Target`]. An op a store cannot do
//! answers [`Unsupported`] (the driver reports the run as not run); a
//! multi-key change says through [`Atomicity`] whether it was atomic, so the
//! report can say so.
//!
//! Expiry: millpond has TTLs (`set_with_ttl`, its purger thread). The other
//! stores have none, so they emulate them the way an application would: the
//! deadline is stored with the value, an ordered index `(deadline, key)` is
//! written with it atomically, every read checks the deadline, and a
//! [`Sweeper`] thread deletes expired entries every 100 ms (millpond's
//! purger tick). All of them read the same clock ([`unix_millis`], the
//! system clock in whole milliseconds, as millpond).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

mod fjall;
mod redb;

pub use self::fjall::FjallTarget;
pub use self::redb::RedbTarget;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
use serde::{Deserialize, Serialize};

/// Which store a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum TargetKind {
    /// The millpond engine.
    Millpond,
    /// Raw sled 0.34.7, `flush_every_ms` = millpond's `write_delay`.
    Sled,
    /// fjall 3 (LSM tree), default journal (written to the OS per op, no
    /// fsync), `persist(SyncAll)` at the durable point.
    Fjall,
    /// redb (copy-on-write B-tree), one write transaction per write with
    /// `Durability::None`, one `Durability::Immediate` commit at the durable
    /// point.
    Redb,
    /// A sharded `HashMap` behind `parking_lot` locks: no disk at all.
    InMemory,
}

impl TargetKind {
    pub const ALL: [TargetKind; 5] = [
        TargetKind::Millpond,
        TargetKind::Sled,
        TargetKind::Fjall,
        TargetKind::Redb,
        TargetKind::InMemory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Millpond => "millpond",
            TargetKind::Sled => "sled",
            TargetKind::Fjall => "fjall",
            TargetKind::Redb => "redb",
            TargetKind::InMemory => "in-memory",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the disk-backed stores are configured for a run.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// millpond's `write_delay`; sled's `flush_every_ms`.
    pub write_delay: Duration,
    /// millpond's `max_dirty_bytes` (`None`: the engine's default).
    pub max_dirty_bytes: Option<usize>,
    /// millpond's `flush_threads`.
    pub flush_threads: usize,
    /// millpond's `inline_threshold` (`None`: the engine's default).
    pub inline_threshold: Option<usize>,
    /// millpond's `compression` (`None`: the engine's default).
    pub compression: Option<millpond::Compression>,
}

/// Keys starting with this prefix live in the second tree of sled (and the
/// second keyspace of fjall, the second table of redb), so that a
/// workload's atomic change spanning both is a two-tree transaction there.
/// millpond and the in-memory map have one keyspace.
pub const SECOND_TREE_PREFIX: &[u8] = b"t2/";

/// Keys starting with this prefix live in the expiring tree of the
/// disk-backed emulations (sled, fjall, redb), where every value carries its
/// deadline; only they can be given a TTL there (`set_with_ttl` of another
/// key is [`Unsupported`] on those). millpond and the in-memory map take a
/// TTL on any key.
pub const TTL_TREE_PREFIX: &[u8] = b"ttl/";

/// Now, as whole milliseconds since the Unix epoch (by the system clock,
/// rounded down): the clock every target's deadlines are kept in, the same
/// as millpond's `SystemClock`.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `now + ttl` in milliseconds, saturating (millpond's rule: a value is
/// live while `now < deadline`, so a zero TTL expires at once).
fn deadline_after(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// Whether a value with this deadline (0: none) is live at `now`.
fn live(deadline: u64, now: impl FnOnce() -> u64) -> bool {
    deadline == 0 || deadline > now()
}

/// What a key's current value must be for a [`Change`] to apply.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// The key has no value.
    Absent,
    /// The key has exactly this value.
    Equals(&'a [u8]),
}

impl Expect<'_> {
    fn matches(&self, current: Option<&[u8]>) -> bool {
        match (self, current) {
            (Expect::Absent, None) => true,
            (Expect::Equals(want), Some(have)) => *want == have,
            _ => false,
        }
    }
}

/// One key's part of a multi-key change: checked against the current value,
/// then set (`new: Some`) or deleted (`new: None`).
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub key: &'a [u8],
    pub expect: Expect<'a>,
    pub new: Option<&'a [u8]>,
}

/// Whether a multi-key change was applied atomically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atomicity {
    /// All of it or nothing, and no reader saw half of it.
    Atomic,
    /// Key by key (each key's change atomic on its own).
    PerKey,
}

/// An op the store cannot do (yet).
#[derive(Debug)]
pub struct Unsupported(pub &'static str);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Unsupported {}

/// millpond's counters at the end of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineStats {
    pub writes: u64,
    pub coalesced_writes: u64,
    pub flushes: u64,
    pub flushed_entries: u64,
    pub syncs: u64,
    pub blobs_written: u64,
    pub flush_errors: u64,
}

/// A store after its durable point: closed, with what is needed to open it
/// again for checking.
pub struct Closed<H> {
    pub handle: H,
    pub engine: Option<EngineStats>,
}

/// A store a workload runs against. Every op is a blocking call, made from
/// several threads at once.
pub trait Target: Sized + Sync {
    /// A value as `get` hands it out.
    type Val: AsRef<[u8]>;
    /// What [`Target::close`] keeps for [`Target::reopen`].
    type Handle;

    /// Opens (creating) the store in `dir`.
    fn open(dir: &Path, tuning: &Tuning) -> Result<Self>;
    /// Reopens the store closed by [`Target::close`] (for checking it).
    fn reopen(dir: &Path, tuning: &Tuning, handle: Self::Handle) -> Result<Self>;

    fn get(&self, key: &[u8]) -> Result<Option<Self::Val>>;
    fn set(&self, key: &[u8], value: &[u8]) -> Result<()>;
    /// An atomic read-modify-write of one key: `f` sees the current value
    /// (`None`: no value) and changes it in place (`None`: delete). `f` may
    /// be called more than once (sled retries); the last call's result
    /// counts.
    fn modify<R>(&self, key: &[u8], f: impl FnMut(&mut Option<Vec<u8>>) -> R) -> Result<R>;
    /// A change of several keys. An unmet [`Expect`] is an error (the store
    /// does not hold what the workload wrote: the run fails).
    fn apply(&self, changes: &[Change<'_>]) -> Result<Atomicity>;
    /// A set with a time to live: the value is absent to every read once
    /// `ttl` has passed (deadline = [`unix_millis`] + `ttl`), and the store
    /// deletes it in the background.
    fn set_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()>;
    /// Entries with a deadline that the store still holds, live or expired
    /// (millpond: `stats().ttl_keys`, its expiry index; the emulations:
    /// their index entries). Untimed use only (it may scan).
    fn ttl_entries(&self) -> Result<u64>;

    /// Makes every write so far durable (used after a workload's untimed
    /// preload).
    fn sync(&self) -> Result<()>;
    /// The durable point that ends a timed phase: every write durable, then
    /// the store closed.
    fn close(self) -> Result<Closed<Self::Handle>>;

    /// millpond's counters, while it runs (other stores: `None`).
    fn engine_stats(&self) -> Option<millpond::Stats> {
        None
    }
}

fn expect_failed(key: &[u8], expect: &Expect<'_>, found: Option<&[u8]>) -> anyhow::Error {
    let want = match expect {
        Expect::Absent => "no value".to_string(),
        Expect::Equals(v) => describe(Some(v)),
    };
    anyhow!(
        "wrong state at key {}: expected {want}, found {}",
        show_key(key),
        describe(found)
    )
}

/// A key as text, escaping what is not printable ASCII.
pub fn show_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

/// A value, briefly: its length and first bytes.
pub fn describe(value: Option<&[u8]>) -> String {
    match value {
        None => "no value".into(),
        Some(v) => {
            let head: String = v.iter().take(16).map(|b| format!("{b:02x}")).collect();
            format!(
                "{} bytes [{head}{}]",
                v.len(),
                if v.len() > 16 { ".." } else { "" }
            )
        }
    }
}

// ---------------------------------------------------------------------------
// Expiry for the emulations

/// Most expired entries a sweeper deletes at once (per shard, or per sled
/// transaction), as millpond's purger slice.
const SWEEP_SLICE: usize = 256;

/// A background thread that runs a sweep every 100 ms (millpond's purger
/// tick) until it is finished or dropped. A failed sweep stops it; the error
/// is reported by [`Sweeper::finish`].
pub struct Sweeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    error: Arc<Mutex<Option<String>>>,
    /// Expired entries deleted so far.
    swept: Arc<AtomicU64>,
}

impl Sweeper {
    const TICK: Duration = Duration::from_millis(100);

    /// Starts the thread; `sweep` returns how many entries it deleted.
    fn start(name: &str, mut sweep: impl FnMut() -> Result<u64> + Send + 'static) -> Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let error = Arc::new(Mutex::new(None));
        let swept = Arc::new(AtomicU64::new(0));
        let (e, n) = (Arc::clone(&error), Arc::clone(&swept));
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                match stopped.recv_timeout(Sweeper::TICK) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                match sweep() {
                    Ok(k) => {
                        n.fetch_add(k, Ordering::Relaxed);
                    }
                    Err(err) => {
                        *e.lock() = Some(format!("{err:#}"));
                        return;
                    }
                }
            })
            .context("starting the expiry sweeper thread")?;
        Ok(Sweeper {
            stop: Some(stop),
            thread: Some(thread),
            error,
            swept,
        })
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops the thread; an error if a sweep failed.
    fn finish(mut self) -> Result<u64> {
        self.halt();
        if let Some(e) = self.error.lock().take() {
            bail!("the expiry sweeper failed: {e}");
        }
        Ok(self.swept.load(Ordering::Relaxed))
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts `slot`'s sweeper unless it runs already (two racing starters:
/// the loser's thread is stopped at once).
fn ensure_sweeper<F: FnMut() -> Result<u64> + Send + 'static>(
    slot: &OnceLock<Sweeper>,
    name: &str,
    sweep: impl FnOnce() -> F,
) -> Result<()> {
    if slot.get().is_none() {
        let _ = slot.set(Sweeper::start(name, sweep())?);
    }
    Ok(())
}

/// Stops a target's sweeper, if it ran; an error if a sweep failed.
fn finish_sweeper(slot: OnceLock<Sweeper>) -> Result<()> {
    match slot.into_inner() {
        Some(s) => s.finish().map(drop),
        None => Ok(()),
    }
}

/// `deadline (big endian) || value`: how the disk-backed emulations (sled,
/// fjall, redb) store a key of their expiring tree.
fn deadline_record(deadline: u64, value: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(8 + value.len());
    r.extend_from_slice(&deadline.to_be_bytes());
    r.extend_from_slice(value);
    r
}

/// The deadline of a stored record (0 for a record too short to have one,
/// which this target never writes).
fn record_deadline(record: &[u8]) -> u64 {
    record
        .get(..8)
        .map_or(0, |d| u64::from_be_bytes(d.try_into().unwrap_or([0; 8])))
}

/// The index entry of `key` with `deadline`: `deadline (big endian) || key`.
fn deadline_index_key(deadline: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&deadline.to_be_bytes());
    k.extend_from_slice(key);
    k
}

// ---------------------------------------------------------------------------
// millpond

/// The millpond engine.
pub struct MillpondTarget {
    engine: millpond::Engine,
}

fn millpond_config(dir: &Path, tuning: &Tuning) -> millpond::Config {
    let mut config = millpond::Config::new(dir)
        .write_delay(tuning.write_delay)
        .flush_threads(tuning.flush_threads);
    if let Some(max) = tuning.max_dirty_bytes {
        config = config.max_dirty_bytes(max);
    }
    if let Some(c) = tuning.compression {
        config = config.compression(c);
    }
    match tuning.inline_threshold {
        Some(t) => config.inline_threshold(t),
        None => config,
    }
}

impl MillpondTarget {
    /// Opens the engine `config` describes (`bench --backend postgres`).
    #[cfg(feature = "postgres")]
    pub fn open_config(config: millpond::Config) -> Result<Self> {
        let engine = millpond::Engine::open(config).context("opening millpond")?;
        Ok(MillpondTarget { engine })
    }

    /// Opens (creating) the store in `dir` with the write-ahead journal in
    /// `mode` (`bench --journal-modes`; [`Target::open`] opens it with
    /// `Journal::Off`, the engine's default).
    pub fn open_journaled(dir: &Path, tuning: &Tuning, mode: millpond::Journal) -> Result<Self> {
        let engine = millpond::Engine::open(millpond_config(dir, tuning).journal(mode))
            .with_context(|| match mode {
                millpond::Journal::Off => format!("opening millpond at {}", dir.display()),
                _ => format!(
                    "opening millpond at {} with Journal::{mode:?}",
                    dir.display()
                ),
            })?;
        Ok(MillpondTarget { engine })
    }
}

impl Target for MillpondTarget {
    type Val = millpond::Value;
    type Handle = ();

    fn open(dir: &Path, tuning: &Tuning) -> Result<Self> {
        MillpondTarget::open_journaled(dir, tuning, millpond::Journal::Off)
    }

    fn reopen(dir: &Path, tuning: &Tuning, (): ()) -> Result<Self> {
        MillpondTarget::open(dir, tuning)
    }

    fn get(&self, key: &[u8]) -> Result<Option<millpond::Value>> {
        Ok(self.engine.get(key)?)
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        Ok(self.engine.set(key, value)?)
    }

    fn modify<R>(&self, key: &[u8], mut f: impl FnMut(&mut Option<Vec<u8>>) -> R) -> Result<R> {
        Ok(self.engine.modify(key, |v| f(v))?)
    }

    /// One millpond transaction: every check, then every write (a failed
    /// check writes nothing).
    fn apply(&self, changes: &[Change<'_>]) -> Result<Atomicity> {
        let checked = self.engine.transaction(|tx| {
            for c in changes {
                let current = tx.get(c.key)?;
                if !c.expect.matches(current.as_deref()) {
                    return Ok(Err(expect_failed(c.key, &c.expect, current.as_deref())));
                }
            }
            for c in changes {
                match c.new {
                    Some(v) => tx.set(c.key, v)?,
                    None => drop(tx.delete(c.key)?),
                }
            }
            Ok(Ok(()))
        })?;
        checked?;
        Ok(Atomicity::Atomic)
    }

    fn set_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        Ok(self.engine.set_with_ttl(key, value, ttl)?)
    }

    fn ttl_entries(&self) -> Result<u64> {
        Ok(self.engine.stats().ttl_keys as u64)
    }

    fn sync(&self) -> Result<()> {
        self.engine.checkpoint().context("millpond checkpoint")?;
        Ok(())
    }

    fn engine_stats(&self) -> Option<millpond::Stats> {
        Some(self.engine.stats())
    }

    fn close(self) -> Result<Closed<()>> {
        self.engine.checkpoint().context("millpond checkpoint")?;
        self.engine.shutdown().context("millpond shutdown")?;
        let s = self.engine.stats();
        Ok(Closed {
            handle: (),
            engine: Some(EngineStats {
                writes: s.writes,
                coalesced_writes: s.coalesced_writes,
                flushes: s.flushes,
                flushed_entries: s.flushed_entries,
                syncs: s.syncs,
                blobs_written: s.blobs_written,
                flush_errors: s.flush_errors,
            }),
        })
    }
}

// ---------------------------------------------------------------------------
// sled

/// Raw sled with the same staleness as millpond: the log is flushed every
/// `write_delay`; each op is one sled call (a transaction where the
/// emulated expiry needs two trees).
///
/// Keys under [`TTL_TREE_PREFIX`] live in the `expiring` tree as an 8-byte
/// big-endian deadline (0: none) followed by the value; the `deadlines` tree
/// holds `deadline || key -> ()` for each one with a deadline, written in
/// the same sled transaction. Reads check the deadline; a [`Sweeper`]
/// (started by the first `set_with_ttl`, or at open when the index is not
/// empty) deletes expired entries from both trees, up to 256 per
/// transaction.
pub struct SledTarget {
    db: sled::Db,
    second: sled::Tree,
    expiring: sled::Tree,
    deadlines: sled::Tree,
    sweeper: OnceLock<Sweeper>,
}

type TxResult<T> = sled::transaction::ConflictableTransactionResult<T, String>;

/// Inside a transaction: the live value of a key of the expiring tree and
/// its deadline.
fn sled_tx_get(
    values: &sled::transaction::TransactionalTree,
    key: &[u8],
    now: u64,
) -> TxResult<Option<(u64, sled::IVec)>> {
    Ok(values.get(key)?.and_then(|r| {
        let d = record_deadline(&r);
        live(d, || now).then(|| (d, r.subslice(8, r.len() - 8)))
    }))
}

/// Inside a transaction: sets (`Some`) or removes (`None`) a key of the
/// expiring tree, keeping the deadline index in step.
fn sled_tx_put(
    values: &sled::transaction::TransactionalTree,
    index: &sled::transaction::TransactionalTree,
    key: &[u8],
    value: Option<&[u8]>,
    deadline: u64,
) -> TxResult<()> {
    let old = match value {
        Some(v) => values.insert(key, deadline_record(deadline, v))?,
        None => values.remove(key)?,
    };
    let old_deadline = old.as_deref().map_or(0, record_deadline);
    let kept = value.is_some() && old_deadline == deadline;
    if old_deadline != 0 && !kept {
        index.remove(deadline_index_key(old_deadline, key))?;
    }
    if value.is_some() && deadline != 0 && !kept {
        index.insert(deadline_index_key(deadline, key), &[][..])?;
    }
    Ok(())
}

fn sled_tx<T>(r: sled::transaction::TransactionResult<T, String>) -> Result<T> {
    use sled::transaction::TransactionError;
    match r {
        Ok(t) => Ok(t),
        Err(TransactionError::Abort(msg)) => Err(anyhow!(msg)),
        Err(TransactionError::Storage(e)) => Err(e.into()),
    }
}

/// One sweep: deletes every entry whose deadline has passed, from both
/// trees, `SWEEP_SLICE` per transaction. Returns how many.
fn sled_sweep(values: &sled::Tree, index: &sled::Tree) -> Result<u64> {
    use sled::Transactional;
    // Expired: deadline <= now, i.e. index keys below (now + 1).
    let end = unix_millis().saturating_add(1).to_be_bytes();
    let mut swept = 0;
    loop {
        let batch = index
            .range(..&end[..])
            .keys()
            .take(SWEEP_SLICE)
            .collect::<sled::Result<Vec<sled::IVec>>>()?;
        if batch.is_empty() {
            return Ok(swept);
        }
        sled_tx((values, index).transaction(|(v, i)| {
            for entry in &batch {
                let (d, key) = (record_deadline(entry), &entry[8..]);
                if let Some(record) = v.get(key)? {
                    // A rewrite with another deadline has its own entry.
                    if record_deadline(&record) == d {
                        v.remove(key)?;
                    }
                }
                i.remove(entry.clone())?;
            }
            Ok(())
        }))?;
        swept += batch.len() as u64;
        if batch.len() < SWEEP_SLICE {
            return Ok(swept);
        }
    }
}

impl SledTarget {
    fn tree(&self, key: &[u8]) -> &sled::Tree {
        if key.starts_with(SECOND_TREE_PREFIX) {
            &self.second
        } else {
            &self.db
        }
    }

    fn start_sweeper(&self) -> Result<()> {
        ensure_sweeper(&self.sweeper, "sled-expiry", || {
            let (v, i) = (self.expiring.clone(), self.deadlines.clone());
            move || sled_sweep(&v, &i)
        })
    }
}

impl Target for SledTarget {
    type Val = sled::IVec;
    type Handle = ();

    fn open(dir: &Path, tuning: &Tuning) -> Result<Self> {
        let ms = u64::try_from(tuning.write_delay.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let config = sled::Config::new().path(dir).flush_every_ms(Some(ms));
        // sled 0.34 may hold its file lock a moment after the previous `Db`
        // was dropped (sled issues 1289, 1234): retry a lock conflict
        // briefly, as millpond's own open does.
        let started = std::time::Instant::now();
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && started.elapsed() < Duration::from_secs(10) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("opening sled at {}", dir.display()))
                }
            }
        };
        let second = db
            .open_tree("second")
            .context("opening sled's second tree")?;
        let expiring = db
            .open_tree("expiring")
            .context("opening sled's expiring tree")?;
        let deadlines = db
            .open_tree("deadlines")
            .context("opening sled's deadline index tree")?;
        let t = SledTarget {
            db,
            second,
            expiring,
            deadlines,
            sweeper: OnceLock::new(),
        };
        if !t.deadlines.is_empty() {
            t.start_sweeper()?;
        }
        Ok(t)
    }

    fn reopen(dir: &Path, tuning: &Tuning, (): ()) -> Result<Self> {
        SledTarget::open(dir, tuning)
    }

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
        if key.starts_with(TTL_TREE_PREFIX) {
            return Ok(self.expiring.get(key)?.and_then(|r| {
                live(record_deadline(&r), unix_millis).then(|| r.subslice(8, r.len() - 8))
            }));
        }
        Ok(self.tree(key).get(key)?)
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.starts_with(TTL_TREE_PREFIX) {
            // A plain set clears the key's deadline (as in millpond).
            use sled::Transactional;
            return sled_tx(
                (&self.expiring, &self.deadlines)
                    .transaction(|(v, i)| sled_tx_put(v, i, key, Some(value), 0)),
            );
        }
        self.tree(key).insert(key, value)?;
        Ok(())
    }

    fn modify<R>(&self, key: &[u8], mut f: impl FnMut(&mut Option<Vec<u8>>) -> R) -> Result<R> {
        if key.starts_with(TTL_TREE_PREFIX) {
            // As millpond: a live key keeps its deadline, an expired key is
            // `None`, a created key has no deadline.
            use sled::Transactional;
            let f = RefCell::new(f);
            return sled_tx((&self.expiring, &self.deadlines).transaction(|(v, i)| {
                let found = sled_tx_get(v, key, unix_millis())?;
                let deadline = found.as_ref().map_or(0, |(d, _)| *d);
                let mut value = found.map(|(_, val)| val.to_vec());
                let r = (f.borrow_mut())(&mut value);
                sled_tx_put(v, i, key, value.as_deref(), deadline)?;
                Ok(r)
            }));
        }
        let mut out = None;
        self.tree(key).update_and_fetch(key, |old| {
            let mut v = old.map(<[u8]>::to_vec);
            out = Some(f(&mut v));
            v
        })?;
        out.ok_or_else(|| anyhow!("sled's update_and_fetch did not call the closure"))
    }

    /// A two-tree sled transaction (four trees when a key of the expiring
    /// tree is involved).
    fn apply(&self, changes: &[Change<'_>]) -> Result<Atomicity> {
        use sled::transaction::ConflictableTransactionError;
        use sled::Transactional;
        let main: &sled::Tree = &self.db;
        if changes.iter().any(|c| c.key.starts_with(TTL_TREE_PREFIX)) {
            let trees = (main, &self.second, &self.expiring, &self.deadlines);
            sled_tx(trees.transaction(|(m, s, v, i)| {
                let now = unix_millis();
                for c in changes {
                    let ttl = c.key.starts_with(TTL_TREE_PREFIX);
                    let current = if ttl {
                        sled_tx_get(v, c.key, now)?.map(|(_, val)| val)
                    } else if c.key.starts_with(SECOND_TREE_PREFIX) {
                        s.get(c.key)?
                    } else {
                        m.get(c.key)?
                    };
                    if !c.expect.matches(current.as_deref()) {
                        let e = expect_failed(c.key, &c.expect, current.as_deref());
                        return Err(ConflictableTransactionError::Abort(e.to_string()));
                    }
                    let tree = if c.key.starts_with(SECOND_TREE_PREFIX) {
                        s
                    } else {
                        m
                    };
                    match (ttl, c.new) {
                        (true, new) => sled_tx_put(v, i, c.key, new, 0)?,
                        (false, Some(new)) => {
                            tree.insert(c.key, new)?;
                        }
                        (false, None) => {
                            tree.remove(c.key)?;
                        }
                    }
                }
                Ok(())
            }))?;
            return Ok(Atomicity::Atomic);
        }
        let result = (main, &self.second).transaction(|(m, s)| {
            for c in changes {
                let tree = if c.key.starts_with(SECOND_TREE_PREFIX) {
                    s
                } else {
                    m
                };
                let current = tree.get(c.key)?;
                if !c.expect.matches(current.as_deref()) {
                    let e = expect_failed(c.key, &c.expect, current.as_deref());
                    return Err(ConflictableTransactionError::Abort(e.to_string()));
                }
                match c.new {
                    Some(v) => {
                        tree.insert(c.key, v)?;
                    }
                    None => {
                        tree.remove(c.key)?;
                    }
                }
            }
            Ok(())
        });
        sled_tx(result)?;
        Ok(Atomicity::Atomic)
    }

    fn set_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        use sled::Transactional;
        if !key.starts_with(TTL_TREE_PREFIX) {
            return Err(Unsupported("the sled baseline gives TTLs only to keys under ttl/").into());
        }
        self.start_sweeper()?;
        let deadline = deadline_after(unix_millis(), ttl);
        sled_tx(
            (&self.expiring, &self.deadlines)
                .transaction(|(v, i)| sled_tx_put(v, i, key, Some(value), deadline)),
        )
    }

    fn ttl_entries(&self) -> Result<u64> {
        Ok(self.deadlines.len() as u64)
    }

    fn sync(&self) -> Result<()> {
        self.db.flush().context("sled flush")?;
        Ok(())
    }

    fn close(self) -> Result<Closed<()>> {
        let SledTarget { db, sweeper, .. } = self;
        // The sweeper first, so that its last deletions are flushed too.
        finish_sweeper(sweeper)?;
        db.flush().context("sled flush")?;
        drop(db);
        Ok(Closed {
            handle: (),
            engine: None,
        })
    }
}

// ---------------------------------------------------------------------------
// in-memory

const MEM_SHARDS: usize = 64;

/// FxHash (as in rustc), finished with the splitmix64 mixer: a fast,
/// non-keyed hash. Plain FxHash leaves the low bits of the hash untouched by
/// the high bytes of a word, so big-endian sequence keys (the journal's)
/// would all collide in hashbrown's buckets.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        super::workloads::mix64(self.0)
    }
}

/// A value of the in-memory store with its deadline (0: none).
struct MemEntry {
    value: Arc<Vec<u8>>,
    deadline: u64,
}

/// One shard of the in-memory store: the map and, under the same lock, its
/// keys with a deadline ordered by deadline.
#[derive(Default)]
pub struct Shard {
    map: HashMap<Box<[u8]>, MemEntry, BuildHasherDefault<FxHasher>>,
    expiry: BTreeSet<(u64, Box<[u8]>)>,
}

impl Shard {
    /// The live value of `key` (the clock is read only for a key with a
    /// deadline).
    fn live(&self, key: &[u8]) -> Option<&Arc<Vec<u8>>> {
        self.map
            .get(key)
            .filter(|e| live(e.deadline, unix_millis))
            .map(|e| &e.value)
    }

    /// Sets `key` (deadline 0: none), keeping the index in step.
    fn put(&mut self, key: &[u8], value: Arc<Vec<u8>>, deadline: u64) {
        match self.map.get_mut(key) {
            Some(e) => {
                if e.deadline != deadline {
                    if e.deadline != 0 {
                        self.expiry.remove(&(e.deadline, Box::from(key)));
                    }
                    if deadline != 0 {
                        self.expiry.insert((deadline, Box::from(key)));
                    }
                }
                *e = MemEntry { value, deadline };
            }
            None => {
                if deadline != 0 {
                    self.expiry.insert((deadline, Box::from(key)));
                }
                self.map.insert(key.into(), MemEntry { value, deadline });
            }
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(e) = self.map.remove(key) {
            if e.deadline != 0 {
                self.expiry.remove(&(e.deadline, Box::from(key)));
            }
        }
    }

    /// Deletes up to `max` expired entries; returns how many.
    fn sweep(&mut self, now: u64, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.expiry.first() {
                Some((d, _)) if *d <= now => {}
                _ => break,
            }
            let Some((_, key)) = self.expiry.pop_first() else {
                break;
            };
            self.map.remove(&key);
            n += 1;
        }
        n
    }
}

/// The map behind [`MemoryTarget`].
pub struct MemStore {
    shards: Vec<RwLock<Shard>>,
}

impl MemStore {
    /// One sweep over every shard, a bounded slice at a time (as millpond's
    /// purger).
    fn sweep(&self) -> u64 {
        let mut total = 0;
        loop {
            let now = unix_millis();
            let mut full = false;
            for shard in &self.shards {
                let n = shard.write().sweep(now, SWEEP_SLICE);
                full |= n == SWEEP_SLICE;
                total += n as u64;
            }
            if !full {
                return total;
            }
        }
    }
}

/// A value of the in-memory store (shared, not copied, by `get`).
pub struct MemVal(Arc<Vec<u8>>);

impl AsRef<[u8]> for MemVal {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A sharded `HashMap` behind `parking_lot` read-write locks. Nothing is
/// written to disk: the upper bound for the other two. A TTL is a deadline
/// beside the value plus an entry in the shard's ordered expiry index;
/// reads check the deadline, and a [`Sweeper`] (started by the first
/// `set_with_ttl`) deletes expired entries every 100 ms.
pub struct MemoryTarget {
    store: Arc<MemStore>,
    sweeper: OnceLock<Sweeper>,
}

impl MemoryTarget {
    fn shard_of(key: &[u8]) -> usize {
        let mut h = FxHasher::default();
        key.hash(&mut h);
        // The high bits are the best mixed.
        (h.finish() >> 32) as usize % MEM_SHARDS
    }

    fn shard(&self, key: &[u8]) -> &RwLock<Shard> {
        &self.store.shards[MemoryTarget::shard_of(key)]
    }

    fn start_sweeper(&self) -> Result<()> {
        ensure_sweeper(&self.sweeper, "mem-expiry", || {
            let store = Arc::clone(&self.store);
            move || Ok(store.sweep())
        })
    }
}

impl Target for MemoryTarget {
    type Val = MemVal;
    type Handle = Arc<MemStore>;

    fn open(_dir: &Path, _tuning: &Tuning) -> Result<Self> {
        let shards = (0..MEM_SHARDS).map(|_| RwLock::default()).collect();
        Ok(MemoryTarget {
            store: Arc::new(MemStore { shards }),
            sweeper: OnceLock::new(),
        })
    }

    fn reopen(_dir: &Path, _tuning: &Tuning, store: Arc<MemStore>) -> Result<Self> {
        let t = MemoryTarget {
            store,
            sweeper: OnceLock::new(),
        };
        if t.store.shards.iter().any(|s| !s.read().expiry.is_empty()) {
            t.start_sweeper()?;
        }
        Ok(t)
    }

    fn get(&self, key: &[u8]) -> Result<Option<MemVal>> {
        Ok(self.shard(key).read().live(key).cloned().map(MemVal))
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let value = Arc::new(value.to_vec());
        self.shard(key).write().put(key, value, 0);
        Ok(())
    }

    /// As millpond: a live key keeps its deadline, an expired key is
    /// `None` to `f`, a key `f` creates has no deadline.
    fn modify<R>(&self, key: &[u8], mut f: impl FnMut(&mut Option<Vec<u8>>) -> R) -> Result<R> {
        let mut shard = self.shard(key).write();
        let Shard { map, expiry } = &mut *shard;
        match map.get_mut(key) {
            Some(e) if live(e.deadline, unix_millis) => {
                // Taken out without a copy unless a reader still holds it.
                let mut v = Some(std::mem::take(Arc::make_mut(&mut e.value)));
                let r = f(&mut v);
                match v {
                    Some(v) => e.value = Arc::new(v),
                    None => {
                        if e.deadline != 0 {
                            expiry.remove(&(e.deadline, Box::from(key)));
                        }
                        map.remove(key);
                    }
                }
                Ok(r)
            }
            _ => {
                let mut v = None;
                let r = f(&mut v);
                match v {
                    Some(v) => shard.put(key, Arc::new(v), 0),
                    None => shard.remove(key),
                }
                Ok(r)
            }
        }
    }

    /// Atomic: every shard involved is write-locked (in index order) while
    /// the change is checked and made.
    fn apply(&self, changes: &[Change<'_>]) -> Result<Atomicity> {
        let mut indexes: Vec<usize> = changes
            .iter()
            .map(|c| MemoryTarget::shard_of(c.key))
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut guards: Vec<(usize, RwLockWriteGuard<'_, Shard>)> = indexes
            .iter()
            .map(|&i| (i, self.store.shards[i].write()))
            .collect();
        let guard_of = |key: &[u8]| -> usize {
            let i = MemoryTarget::shard_of(key);
            guards.iter().position(|(g, _)| *g == i).unwrap_or(0)
        };
        let slots: Vec<usize> = changes.iter().map(|c| guard_of(c.key)).collect();
        for (c, &g) in changes.iter().zip(&slots) {
            let current = guards[g].1.live(c.key).map(|v| v.as_slice());
            if !c.expect.matches(current) {
                return Err(expect_failed(c.key, &c.expect, current));
            }
        }
        for (c, &g) in changes.iter().zip(&slots) {
            let shard = &mut guards[g].1;
            match c.new {
                Some(v) => shard.put(c.key, Arc::new(v.to_vec()), 0),
                None => shard.remove(c.key),
            }
        }
        Ok(Atomicity::Atomic)
    }

    fn set_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.start_sweeper()?;
        let value = Arc::new(value.to_vec());
        let deadline = deadline_after(unix_millis(), ttl);
        self.shard(key).write().put(key, value, deadline);
        Ok(())
    }

    fn ttl_entries(&self) -> Result<u64> {
        Ok(self
            .store
            .shards
            .iter()
            .map(|s| s.read().expiry.len() as u64)
            .sum())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn close(self) -> Result<Closed<Arc<MemStore>>> {
        finish_sweeper(self.sweeper)?;
        Ok(Closed {
            handle: self.store,
            engine: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning() -> Tuning {
        Tuning {
            write_delay: Duration::from_millis(50),
            max_dirty_bytes: Some(1 << 20),
            flush_threads: 1,
            inline_threshold: None,
            compression: None,
        }
    }

    /// The same script against every store: the same answers.
    fn script<T: Target>(dir: &Path) {
        let t = T::open(dir, &tuning()).unwrap();
        t.set(b"a", b"1").unwrap();
        assert_eq!(t.get(b"a").unwrap().unwrap().as_ref(), b"1");
        let n = t
            .modify(b"a", |v| {
                v.as_mut().unwrap().push(b'2');
                7
            })
            .unwrap();
        assert_eq!(n, 7);
        let changes = [
            Change {
                key: b"a",
                expect: Expect::Equals(b"12"),
                new: None,
            },
            Change {
                key: b"t2/b",
                expect: Expect::Absent,
                new: Some(b"x"),
            },
        ];
        t.apply(&changes).unwrap();
        // The same change again: its expectations no longer hold.
        assert!(t.apply(&changes).is_err());
        let closed = t.close().unwrap();
        let t = T::reopen(dir, &tuning(), closed.handle).unwrap();
        assert!(t.get(b"a").unwrap().is_none());
        assert_eq!(t.get(b"t2/b").unwrap().unwrap().as_ref(), b"x");
        t.close().unwrap();
    }

    /// A directory removed when dropped, even by a failing test.
    fn tempdir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("millpond-cli-test-{name}-"))
            .tempdir()
            .unwrap()
    }

    /// Polls `f` until it returns `want`, for up to a minute (a bound
    /// against a hang, far beyond what a slow machine needs).
    fn eventually(want: u64, f: impl Fn() -> u64) -> u64 {
        let started = std::time::Instant::now();
        loop {
            let got = f();
            if got == want || started.elapsed() > Duration::from_secs(60) {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Expiry, the same on every store: reads, sweeping, deadlines kept by
    /// modify and across reopen, cleared by plain writes.
    fn ttl_script<T: Target>(dir: &Path) {
        let hour = Duration::from_secs(3600);
        let t = T::open(dir, &tuning()).unwrap();
        let a_set_at = unix_millis();
        t.set_with_ttl(b"ttl/a", b"1", Duration::from_millis(60))
            .unwrap();
        t.set_with_ttl(b"ttl/b", b"2", hour).unwrap();
        t.set_with_ttl(b"ttl/c", b"3", Duration::ZERO).unwrap();
        t.set(b"ttl/d", b"4").unwrap();
        assert_eq!(t.get(b"ttl/b").unwrap().unwrap().as_ref(), b"2");
        // Live until its deadline: gone only if 60 ms have passed (a slow
        // machine may take that long to get here).
        match t.get(b"ttl/a").unwrap() {
            Some(v) => assert_eq!(v.as_ref(), b"1"),
            None => assert!(
                unix_millis() >= a_set_at + 60,
                "ttl/a expired before its deadline"
            ),
        }
        assert!(
            t.get(b"ttl/c").unwrap().is_none(),
            "a zero TTL expires at once"
        );
        t.modify(b"ttl/b", |v| v.as_mut().unwrap().push(b'x'))
            .unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert!(t.get(b"ttl/a").unwrap().is_none());
        // An expired key is None to modify, and comes back without a TTL.
        t.modify(b"ttl/c", |v| {
            assert!(v.is_none());
            *v = Some(b"5".to_vec());
        })
        .unwrap();
        // Swept: only b keeps a deadline.
        assert_eq!(eventually(1, || t.ttl_entries().unwrap()), 1);
        let closed = t.close().unwrap();
        let t = T::reopen(dir, &tuning(), closed.handle).unwrap();
        assert!(t.get(b"ttl/a").unwrap().is_none());
        assert_eq!(t.get(b"ttl/b").unwrap().unwrap().as_ref(), b"2x");
        assert_eq!(t.get(b"ttl/c").unwrap().unwrap().as_ref(), b"5");
        assert_eq!(t.get(b"ttl/d").unwrap().unwrap().as_ref(), b"4");
        assert_eq!(t.ttl_entries().unwrap(), 1);
        // A multi-key change writes plainly: the deadline goes.
        let changes = [Change {
            key: b"ttl/b",
            expect: Expect::Equals(b"2x"),
            new: Some(b"6"),
        }];
        t.apply(&changes).unwrap();
        assert_eq!(t.ttl_entries().unwrap(), 0);
        assert_eq!(t.get(b"ttl/b").unwrap().unwrap().as_ref(), b"6");
        t.set_with_ttl(b"ttl/b", b"7", Duration::from_millis(30))
            .unwrap();
        t.set(b"ttl/b", b"8").unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(t.get(b"ttl/b").unwrap().unwrap().as_ref(), b"8");
        assert_eq!(t.ttl_entries().unwrap(), 0);
        t.close().unwrap();
    }

    #[test]
    fn every_target_expires_keys_the_same_way() {
        ttl_script::<MemoryTarget>(tempdir("ttl-mem").path());
        for (name, run) in [
            ("ttl-millpond", ttl_script::<MillpondTarget> as fn(&Path)),
            ("ttl-sled", ttl_script::<SledTarget>),
            ("ttl-fjall", ttl_script::<FjallTarget>),
            ("ttl-redb", ttl_script::<RedbTarget>),
        ] {
            run(tempdir(name).path());
        }
        // The disk-backed emulations keep TTL keys in their own tree, under
        // their own prefix.
        fn refuses_other_keys<T: Target>(d: &Path) {
            let t = T::open(d, &tuning()).unwrap();
            let err = t
                .set_with_ttl(b"other", b"1", Duration::from_secs(1))
                .unwrap_err();
            assert!(err.downcast_ref::<Unsupported>().is_some());
            t.close().unwrap();
        }
        refuses_other_keys::<SledTarget>(tempdir("ttl-sled-prefix").path());
        refuses_other_keys::<FjallTarget>(tempdir("ttl-fjall-prefix").path());
        refuses_other_keys::<RedbTarget>(tempdir("ttl-redb-prefix").path());
    }

    #[test]
    fn every_target_runs_the_same_script() {
        script::<MemoryTarget>(tempdir("mem").path());
        for (name, run) in [
            ("millpond", script::<MillpondTarget> as fn(&Path)),
            ("sled", script::<SledTarget>),
            ("fjall", script::<FjallTarget>),
            ("redb", script::<RedbTarget>),
        ] {
            run(tempdir(name).path());
        }
    }
}
