//! fjall 3, the LSM tree a Rust user would pick for write-heavy state, used
//! the way its documentation shows: a plain `Database` (not its
//! transactional variants), default options, the journal written to the OS
//! on every write and fsynced only at the durable point
//! (`persist(PersistMode::SyncAll)`; fjall fsyncs nothing on its own before
//! that, beyond sealing a full journal).
//!
//! What fjall's plain `Database` does not do, this target does as an
//! application would:
//! - `modify` (an atomic read-modify-write of one key) and `apply` (a
//!   checked multi-key change) hold a lock per key stripe ([`Stripes`], the
//!   application's, 1024 of them) around the read and the write; the writes
//!   of a multi-key change go in one `WriteBatch`, which fjall commits
//!   atomically across keyspaces. (fjall's optimistic-transaction database
//!   would do the same with conflict checks on every write, plain sets
//!   included; the stripes leave plain sets and gets on fjall's fastest
//!   path.)
//! - Keys under [`SECOND_TREE_PREFIX`] live in a second keyspace (as sled's
//!   second tree), so the tasks workload's change spans two keyspaces.
//! - Expiry, as on sled: keys under [`TTL_TREE_PREFIX`] live in the
//!   `expiring` keyspace as `deadline || value`; `deadlines` holds
//!   `deadline || key` for each one with a deadline, written in the same
//!   batch, under the key's stripe lock; reads check the deadline; a
//!   [`Sweeper`] deletes expired entries every 100 ms, 256 per batch,
//!   scanning the index from where its last sweep ended (not through the
//!   tombstones of every earlier sweep).

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Slice};
use parking_lot::{Mutex, MutexGuard};

use super::{deadline_after, deadline_index_key, deadline_record, record_deadline};
use super::{ensure_sweeper, expect_failed, finish_sweeper, live, unix_millis};
use super::{Atomicity, Change, Closed, FxHasher, Sweeper, Target, Tuning, Unsupported};
use super::{SECOND_TREE_PREFIX, SWEEP_SLICE, TTL_TREE_PREFIX};

/// Locks per key stripe, taken by `modify`, `apply`, the TTL writes and the
/// sweeper, always in increasing index order when more than one.
pub struct Stripes(Vec<Mutex<()>>);

impl Stripes {
    const COUNT: usize = 1024;

    fn new() -> Stripes {
        Stripes((0..Stripes::COUNT).map(|_| Mutex::new(())).collect())
    }

    fn index(key: &[u8]) -> usize {
        let mut h = FxHasher::default();
        key.hash(&mut h);
        (h.finish() >> 32) as usize % Stripes::COUNT
    }

    fn lock(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        self.0[Stripes::index(key)].lock()
    }

    /// The stripes of all `keys`, each once, in index order.
    fn lock_all<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> Vec<MutexGuard<'_, ()>> {
        let mut at: Vec<usize> = keys.map(Stripes::index).collect();
        at.sort_unstable();
        at.dedup();
        at.into_iter().map(|i| self.0[i].lock()).collect()
    }
}

/// The keyspaces, shared with the sweeper thread.
#[derive(Clone)]
struct Spaces {
    db: Database,
    main: Keyspace,
    second: Keyspace,
    expiring: Keyspace,
    deadlines: Keyspace,
}

impl Spaces {
    fn of(&self, key: &[u8]) -> &Keyspace {
        if key.starts_with(TTL_TREE_PREFIX) {
            &self.expiring
        } else if key.starts_with(SECOND_TREE_PREFIX) {
            &self.second
        } else {
            &self.main
        }
    }

    /// The live value of a key of the expiring keyspace, and its deadline.
    fn get_expiring(&self, key: &[u8], now: u64) -> Result<Option<(u64, Slice)>> {
        Ok(self.expiring.get(key)?.and_then(|r| {
            let d = record_deadline(&r);
            live(d, || now).then(|| (d, Slice::from(&r[8..])))
        }))
    }

    /// The value `get` sees (the deadline checked for a TTL key).
    fn current(&self, key: &[u8], now: u64) -> Result<Option<Slice>> {
        if key.starts_with(TTL_TREE_PREFIX) {
            return Ok(self.get_expiring(key, now)?.map(|(_, v)| v));
        }
        Ok(self.of(key).get(key)?)
    }

    /// Adds to `batch` the writes that set (`Some`) or delete (`None`) a key
    /// of the expiring keyspace with `deadline`, keeping the index in step.
    /// The caller holds the key's stripe.
    fn put_expiring(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        key: &[u8],
        value: Option<&[u8]>,
        deadline: u64,
    ) -> Result<()> {
        let old = self.expiring.get(key)?.map_or(0, |r| record_deadline(&r));
        match value {
            Some(v) => batch.insert(&self.expiring, key, deadline_record(deadline, v)),
            None => batch.remove(&self.expiring, key),
        }
        let kept = value.is_some() && old == deadline;
        if old != 0 && !kept {
            batch.remove(&self.deadlines, deadline_index_key(old, key));
        }
        if value.is_some() && deadline != 0 && !kept {
            batch.insert(&self.deadlines, deadline_index_key(deadline, key), &[][..]);
        }
        Ok(())
    }

    /// Adds to `batch` a plain write (no deadline) of any key.
    fn put(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<()> {
        if key.starts_with(TTL_TREE_PREFIX) {
            return self.put_expiring(batch, key, value, 0);
        }
        match value {
            Some(v) => batch.insert(self.of(key), key, v),
            None => batch.remove(self.of(key), key),
        }
        Ok(())
    }

    /// One sweep: deletes every entry whose deadline has passed, from both
    /// keyspaces, `SWEEP_SLICE` per batch. Returns how many.
    ///
    /// The scan starts at `*from`, a second before the end of the last
    /// complete sweep, not at the start of the index, and each slice after
    /// the previous one: deletions are tombstones until compaction, and an
    /// LSM scan from the start would wade through all of them every time
    /// (how an application uses an LSM as a queue: with a lower bound). A new
    /// entry's deadline is never before the time it is written; the second
    /// covers a write racing with a sweep and small clock steps.
    fn sweep(&self, stripes: &Stripes, from: &mut u64) -> Result<u64> {
        let now = unix_millis();
        let end = now.saturating_add(1).to_be_bytes();
        let mut start = from.to_be_bytes().to_vec();
        let mut swept = 0;
        loop {
            let entries = self
                .deadlines
                .range(&start[..]..&end[..])
                .take(SWEEP_SLICE)
                .map(|g| g.key())
                .collect::<fjall::Result<Vec<Slice>>>()?;
            if entries.is_empty() {
                *from = now.saturating_sub(1000);
                return Ok(swept);
            }
            let _held = stripes.lock_all(entries.iter().map(|e| &e[8..]));
            let mut batch = self.db.batch();
            for entry in &entries {
                let (d, key) = (record_deadline(entry), &entry[8..]);
                if let Some(record) = self.expiring.get(key)? {
                    // A rewrite with another deadline has its own entry.
                    if record_deadline(&record) == d {
                        batch.remove(&self.expiring, key);
                    }
                }
                batch.remove(&self.deadlines, entry.clone());
            }
            batch.commit()?;
            swept += entries.len() as u64;
            // The next slice starts just after this one (its keys are
            // tombstones now).
            if let Some(last) = entries.last() {
                start = last.to_vec();
                start.push(0);
            }
            if entries.len() < SWEEP_SLICE {
                *from = now.saturating_sub(1000);
                return Ok(swept);
            }
        }
    }
}

/// fjall 3 with default options (see the module documentation).
pub struct FjallTarget {
    spaces: Spaces,
    stripes: Arc<Stripes>,
    sweeper: OnceLock<Sweeper>,
}

impl FjallTarget {
    fn start_sweeper(&self) -> Result<()> {
        ensure_sweeper(&self.sweeper, "fjall-expiry", || {
            let (spaces, stripes) = (self.spaces.clone(), Arc::clone(&self.stripes));
            let mut from = 0;
            move || spaces.sweep(&stripes, &mut from)
        })
    }
}

impl Target for FjallTarget {
    type Val = Slice;
    type Handle = ();

    fn open(dir: &Path, _tuning: &Tuning) -> Result<Self> {
        // The previous `Database` of this directory may still be letting go
        // of its lock file: retry a lock conflict briefly.
        let started = std::time::Instant::now();
        let db = loop {
            match Database::builder(dir).open() {
                Ok(db) => break db,
                Err(fjall::Error::Locked) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("opening fjall at {}", dir.display()))
                }
            }
        };
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .with_context(|| format!("opening fjall's {name} keyspace"))
        };
        let spaces = Spaces {
            main: keyspace("main")?,
            second: keyspace("second")?,
            expiring: keyspace("expiring")?,
            deadlines: keyspace("deadlines")?,
            db,
        };
        let t = FjallTarget {
            spaces,
            stripes: Arc::new(Stripes::new()),
            sweeper: OnceLock::new(),
        };
        if !t.spaces.deadlines.is_empty()? {
            t.start_sweeper()?;
        }
        Ok(t)
    }

    fn reopen(dir: &Path, tuning: &Tuning, (): ()) -> Result<Self> {
        FjallTarget::open(dir, tuning)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Slice>> {
        if key.starts_with(TTL_TREE_PREFIX) {
            return self.spaces.current(key, unix_millis());
        }
        Ok(self.spaces.of(key).get(key)?)
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.starts_with(TTL_TREE_PREFIX) {
            // A plain set clears the key's deadline (as in millpond).
            let _held = self.stripes.lock(key);
            let mut batch = self.spaces.db.batch();
            self.spaces.put_expiring(&mut batch, key, Some(value), 0)?;
            batch.commit()?;
            return Ok(());
        }
        self.spaces.of(key).insert(key, value)?;
        Ok(())
    }

    /// Under the key's stripe: read, `f`, write. As millpond for a TTL key:
    /// a live key keeps its deadline, an expired key is `None`, a created
    /// key has no deadline.
    fn modify<R>(&self, key: &[u8], mut f: impl FnMut(&mut Option<Vec<u8>>) -> R) -> Result<R> {
        let _held = self.stripes.lock(key);
        if key.starts_with(TTL_TREE_PREFIX) {
            let found = self.spaces.get_expiring(key, unix_millis())?;
            let deadline = found.as_ref().map_or(0, |(d, _)| *d);
            let mut value = found.map(|(_, v)| v.to_vec());
            let r = f(&mut value);
            let mut batch = self.spaces.db.batch();
            self.spaces
                .put_expiring(&mut batch, key, value.as_deref(), deadline)?;
            batch.commit()?;
            return Ok(r);
        }
        let space = self.spaces.of(key);
        let mut value = space.get(key)?.map(|v| v.to_vec());
        let r = f(&mut value);
        match value {
            Some(v) => space.insert(key, v)?,
            None => space.remove(key)?,
        }
        Ok(r)
    }

    /// Under the stripes of every key: every check, then one atomic batch.
    fn apply(&self, changes: &[Change<'_>]) -> Result<Atomicity> {
        let _held = self.stripes.lock_all(changes.iter().map(|c| c.key));
        let now = unix_millis();
        for c in changes {
            let current = self.spaces.current(c.key, now)?;
            if !c.expect.matches(current.as_deref()) {
                return Err(expect_failed(c.key, &c.expect, current.as_deref()));
            }
        }
        let mut batch = self.spaces.db.batch();
        for c in changes {
            self.spaces.put(&mut batch, c.key, c.new)?;
        }
        batch.commit()?;
        Ok(Atomicity::Atomic)
    }

    fn set_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        if !key.starts_with(TTL_TREE_PREFIX) {
            return Err(
                Unsupported("the fjall baseline gives TTLs only to keys under ttl/").into(),
            );
        }
        self.start_sweeper()?;
        let _held = self.stripes.lock(key);
        let deadline = deadline_after(unix_millis(), ttl);
        let mut batch = self.spaces.db.batch();
        self.spaces
            .put_expiring(&mut batch, key, Some(value), deadline)?;
        batch.commit()?;
        Ok(())
    }

    fn ttl_entries(&self) -> Result<u64> {
        Ok(self.spaces.deadlines.len()? as u64)
    }

    fn sync(&self) -> Result<()> {
        self.spaces
            .db
            .persist(PersistMode::SyncAll)
            .context("fjall persist(SyncAll)")
    }

    fn close(self) -> Result<Closed<()>> {
        let FjallTarget {
            spaces, sweeper, ..
        } = self;
        // The sweeper first, so that its last deletions are persisted too.
        finish_sweeper(sweeper)?;
        spaces
            .db
            .persist(PersistMode::SyncAll)
            .context("fjall persist(SyncAll)")?;
        drop(spaces);
        Ok(Closed {
            handle: (),
            engine: None,
        })
    }
}
