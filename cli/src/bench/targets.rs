//! The stores a workload runs against, behind one trait: millpond, raw sled
//! with the same staleness, and an in-memory sharded map (the upper bound).
//!
//! A workload only uses the ops in [`Target`]. An op a store cannot do yet
//! (a TTL) answers [`Unsupported`]; a multi-key change says through
//! [`Atomicity`] whether it was atomic, so the report can say so.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use parking_lot::{RwLock, RwLockWriteGuard};
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
    /// A sharded `HashMap` behind `parking_lot` locks: no disk at all.
    InMemory,
}

impl TargetKind {
    pub const ALL: [TargetKind; 3] = [TargetKind::Millpond, TargetKind::Sled, TargetKind::InMemory];

    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Millpond => "millpond",
            TargetKind::Sled => "sled",
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
    /// millpond's `max_dirty_bytes`.
    pub max_dirty_bytes: usize,
    /// millpond's `flush_threads`.
    pub flush_threads: usize,
    /// millpond's `inline_threshold` (`None`: the engine's default).
    pub inline_threshold: Option<usize>,
}

/// Keys starting with this prefix live in the sled baseline's second tree,
/// so that a workload's atomic change spanning both is a two-tree sled
/// transaction. The other stores have one keyspace.
pub const SECOND_TREE_PREFIX: &[u8] = b"t2/";

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
    /// A set with a time to live. No store supports it yet.
    fn set_with_ttl(&self, _key: &[u8], _value: &[u8], _ttl: Duration) -> Result<()> {
        Err(Unsupported("TTL not implemented yet").into())
    }

    /// Makes every write so far durable (used after a workload's untimed
    /// preload).
    fn sync(&self) -> Result<()>;
    /// The durable point that ends a timed phase: every write durable, then
    /// the store closed.
    fn close(self) -> Result<Closed<Self::Handle>>;
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
// millpond

/// The millpond engine.
pub struct MillpondTarget {
    engine: millpond::Engine,
}

fn millpond_config(dir: &Path, tuning: &Tuning) -> millpond::Config {
    let config = millpond::Config::new(dir)
        .write_delay(tuning.write_delay)
        .max_dirty_bytes(tuning.max_dirty_bytes)
        .flush_threads(tuning.flush_threads);
    match tuning.inline_threshold {
        Some(t) => config.inline_threshold(t),
        None => config,
    }
}

impl Target for MillpondTarget {
    type Val = millpond::Value;
    type Handle = ();

    fn open(dir: &Path, tuning: &Tuning) -> Result<Self> {
        let engine = millpond::Engine::open(millpond_config(dir, tuning))
            .with_context(|| format!("opening millpond at {}", dir.display()))?;
        Ok(MillpondTarget { engine })
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

    fn sync(&self) -> Result<()> {
        self.engine.checkpoint().context("millpond checkpoint")?;
        Ok(())
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
/// `write_delay`; each op is one sled call.
pub struct SledTarget {
    db: sled::Db,
    second: sled::Tree,
}

impl SledTarget {
    fn tree(&self, key: &[u8]) -> &sled::Tree {
        if key.starts_with(SECOND_TREE_PREFIX) {
            &self.second
        } else {
            &self.db
        }
    }
}

impl Target for SledTarget {
    type Val = sled::IVec;
    type Handle = ();

    fn open(dir: &Path, tuning: &Tuning) -> Result<Self> {
        let ms = u64::try_from(tuning.write_delay.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(ms))
            .open()
            .with_context(|| format!("opening sled at {}", dir.display()))?;
        let second = db
            .open_tree("second")
            .context("opening sled's second tree")?;
        Ok(SledTarget { db, second })
    }

    fn reopen(dir: &Path, tuning: &Tuning, (): ()) -> Result<Self> {
        SledTarget::open(dir, tuning)
    }

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
        Ok(self.tree(key).get(key)?)
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree(key).insert(key, value)?;
        Ok(())
    }

    fn modify<R>(&self, key: &[u8], mut f: impl FnMut(&mut Option<Vec<u8>>) -> R) -> Result<R> {
        let mut out = None;
        self.tree(key).update_and_fetch(key, |old| {
            let mut v = old.map(<[u8]>::to_vec);
            out = Some(f(&mut v));
            v
        })?;
        out.ok_or_else(|| anyhow!("sled's update_and_fetch did not call the closure"))
    }

    /// A two-tree sled transaction.
    fn apply(&self, changes: &[Change<'_>]) -> Result<Atomicity> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;
        let main: &sled::Tree = &self.db;
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
        match result {
            Ok(()) => Ok(Atomicity::Atomic),
            Err(TransactionError::Abort(msg)) => Err(anyhow!(msg)),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    fn sync(&self) -> Result<()> {
        self.db.flush().context("sled flush")?;
        Ok(())
    }

    fn close(self) -> Result<Closed<()>> {
        self.db.flush().context("sled flush")?;
        drop(self);
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

type Shard = HashMap<Box<[u8]>, Arc<Vec<u8>>, BuildHasherDefault<FxHasher>>;

/// The map behind [`MemoryTarget`].
pub struct MemStore {
    shards: Vec<RwLock<Shard>>,
}

/// A value of the in-memory store (shared, not copied, by `get`).
pub struct MemVal(Arc<Vec<u8>>);

impl AsRef<[u8]> for MemVal {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A sharded `HashMap` behind `parking_lot` read-write locks. Nothing is
/// written to disk: the upper bound for the other two.
pub struct MemoryTarget {
    store: Arc<MemStore>,
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
}

impl Target for MemoryTarget {
    type Val = MemVal;
    type Handle = Arc<MemStore>;

    fn open(_dir: &Path, _tuning: &Tuning) -> Result<Self> {
        let shards = (0..MEM_SHARDS).map(|_| RwLock::default()).collect();
        Ok(MemoryTarget {
            store: Arc::new(MemStore { shards }),
        })
    }

    fn reopen(_dir: &Path, _tuning: &Tuning, store: Arc<MemStore>) -> Result<Self> {
        Ok(MemoryTarget { store })
    }

    fn get(&self, key: &[u8]) -> Result<Option<MemVal>> {
        Ok(self.shard(key).read().get(key).cloned().map(MemVal))
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let value = Arc::new(value.to_vec());
        let mut shard = self.shard(key).write();
        match shard.get_mut(key) {
            Some(slot) => *slot = value,
            None => {
                shard.insert(key.into(), value);
            }
        }
        Ok(())
    }

    fn modify<R>(&self, key: &[u8], mut f: impl FnMut(&mut Option<Vec<u8>>) -> R) -> Result<R> {
        let mut shard = self.shard(key).write();
        match shard.get_mut(key) {
            Some(slot) => {
                // Taken out without a copy unless a reader still holds it.
                let mut v = Some(std::mem::take(Arc::make_mut(slot)));
                let r = f(&mut v);
                match v {
                    Some(v) => *slot = Arc::new(v),
                    None => {
                        shard.remove(key);
                    }
                }
                Ok(r)
            }
            None => {
                let mut v = None;
                let r = f(&mut v);
                if let Some(v) = v {
                    shard.insert(key.into(), Arc::new(v));
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
            let current = guards[g].1.get(c.key).map(|v| v.as_slice());
            if !c.expect.matches(current) {
                return Err(expect_failed(c.key, &c.expect, current));
            }
        }
        for (c, &g) in changes.iter().zip(&slots) {
            let shard = &mut guards[g].1;
            match c.new {
                Some(v) => {
                    shard.insert(c.key.into(), Arc::new(v.to_vec()));
                }
                None => {
                    shard.remove(c.key);
                }
            }
        }
        Ok(Atomicity::Atomic)
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn close(self) -> Result<Closed<Arc<MemStore>>> {
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
            max_dirty_bytes: 1 << 20,
            flush_threads: 1,
            inline_threshold: None,
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

    fn tempdir(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("millpond-cli-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn every_target_runs_the_same_script() {
        script::<MemoryTarget>(&tempdir("mem"));
        for (name, run) in [
            ("millpond", script::<MillpondTarget> as fn(&Path)),
            ("sled", script::<SledTarget>),
        ] {
            let d = tempdir(name);
            run(&d);
            std::fs::remove_dir_all(&d).unwrap();
        }
    }
}
