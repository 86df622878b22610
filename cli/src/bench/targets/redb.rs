//! redb, a copy-on-write B-tree with ACID transactions, used as its
//! documentation suggests for many small writes that need not each be
//! durable: **one write transaction per write op** with
//! `Durability::None`, and one commit with `Durability::Immediate` at the
//! durable point (a non-durable commit is persisted by the next durable
//! one). redb serializes write transactions; writes from several threads
//! take turns, as they would in an application. (Batching several threads'
//! ops into one transaction would need a commit queue in front of redb:
//! that is a write-behind buffer, millpond's job, not redb's.) Default
//! options otherwise (a 1 GiB page cache).
//!
//! Each `get` is a read transaction of its own. `modify` and `apply` are one
//! write transaction each (read, check, write, commit). Keys under
//! [`SECOND_TREE_PREFIX`] live in a second table, as in sled; expiry is
//! emulated as for sled (keys under [`TTL_TREE_PREFIX`] in an `expiring`
//! table as `deadline || value`, a `deadlines` index table written in the
//! same transaction, reads check the deadline, a [`Sweeper`] deletes
//! expired entries every 100 ms, 256 per transaction).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use redb::{Table, TableDefinition, WriteTransaction};

use super::{deadline_after, deadline_index_key, deadline_record, record_deadline};
use super::{ensure_sweeper, expect_failed, finish_sweeper, live, unix_millis};
use super::{Atomicity, Change, Closed, Sweeper, Target, Tuning, Unsupported};
use super::{SECOND_TREE_PREFIX, SWEEP_SLICE, TTL_TREE_PREFIX};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;
type RwTable<'t> = Table<'t, &'static [u8], &'static [u8]>;

const MAIN: Def = TableDefinition::new("main");
const SECOND: Def = TableDefinition::new("second");
const EXPIRING: Def = TableDefinition::new("expiring");
const DEADLINES: Def = TableDefinition::new("deadlines");

/// The table a plain key lives in.
fn table_of(key: &[u8]) -> Def {
    if key.starts_with(TTL_TREE_PREFIX) {
        EXPIRING
    } else if key.starts_with(SECOND_TREE_PREFIX) {
        SECOND
    } else {
        MAIN
    }
}

/// The store's one file.
fn file(dir: &Path) -> PathBuf {
    dir.join("store.redb")
}

/// Runs `f` in one write transaction with `durability` and commits it; an
/// error from `f` aborts it.
fn write<R>(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&WriteTransaction) -> Result<R>,
) -> Result<R> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    match f(&txn) {
        Ok(r) => {
            txn.commit()?;
            Ok(r)
        }
        Err(e) => {
            txn.abort()?;
            Err(e)
        }
    }
}

/// Inside a write transaction: the live value of a key of the expiring
/// table and its deadline.
fn get_expiring(values: &RwTable<'_>, key: &[u8], now: u64) -> Result<Option<(u64, Vec<u8>)>> {
    Ok(values.get(key)?.and_then(|g| {
        let r = g.value();
        let d = record_deadline(r);
        live(d, || now).then(|| (d, r[8..].to_vec()))
    }))
}

/// Inside a write transaction: sets (`Some`) or removes (`None`) a key of
/// the expiring table, keeping the deadline index in step.
fn put_expiring(
    values: &mut RwTable<'_>,
    index: &mut RwTable<'_>,
    key: &[u8],
    value: Option<&[u8]>,
    deadline: u64,
) -> Result<()> {
    let old = match value {
        Some(v) => values
            .insert(key, deadline_record(deadline, v).as_slice())?
            .map_or(0, |g| record_deadline(g.value())),
        None => values
            .remove(key)?
            .map_or(0, |g| record_deadline(g.value())),
    };
    let kept = value.is_some() && old == deadline;
    if old != 0 && !kept {
        index.remove(deadline_index_key(old, key).as_slice())?;
    }
    if value.is_some() && deadline != 0 && !kept {
        index.insert(deadline_index_key(deadline, key).as_slice(), &[][..])?;
    }
    Ok(())
}

/// One sweep: deletes every entry whose deadline has passed, from both
/// tables, `SWEEP_SLICE` per transaction. Returns how many.
fn sweep(db: &Database) -> Result<u64> {
    let end = unix_millis().saturating_add(1).to_be_bytes();
    let mut swept = 0;
    loop {
        let n = write(db, Durability::None, |txn| {
            let mut values = txn.open_table(EXPIRING)?;
            let mut index = txn.open_table(DEADLINES)?;
            let entries = index
                .range(..&end[..])?
                .take(SWEEP_SLICE)
                .map(|e| e.map(|(k, _)| k.value().to_vec()))
                .collect::<Result<Vec<Vec<u8>>, _>>()?;
            for entry in &entries {
                let (d, key) = (record_deadline(entry), &entry[8..]);
                let due = values
                    .get(key)?
                    .is_some_and(|r| record_deadline(r.value()) == d);
                // A rewrite with another deadline has its own entry.
                if due {
                    values.remove(key)?;
                }
                index.remove(entry.as_slice())?;
            }
            Ok(entries.len())
        })?;
        swept += n as u64;
        if n < SWEEP_SLICE {
            return Ok(swept);
        }
    }
}

/// redb, one write transaction per write (see the module documentation).
pub struct RedbTarget {
    db: Arc<Database>,
    sweeper: OnceLock<Sweeper>,
}

impl RedbTarget {
    fn start_sweeper(&self) -> Result<()> {
        ensure_sweeper(&self.sweeper, "redb-expiry", || {
            let db = Arc::clone(&self.db);
            move || sweep(&db)
        })
    }

    fn write<R>(&self, f: impl FnOnce(&WriteTransaction) -> Result<R>) -> Result<R> {
        write(&self.db, Durability::None, f)
    }

    /// A plain set in a write transaction of its own committed with
    /// `Durability::Immediate`: durable when it returns (the peer of
    /// millpond's `Journal::Power` in `bench --journal-modes`; [`Target::set`]
    /// commits with `Durability::None`).
    pub fn set_durable(&self, key: &[u8], value: &[u8]) -> Result<()> {
        write(&self.db, Durability::Immediate, |txn| {
            tx_put(txn, key, Some(value), 0)
        })
    }

    /// The value a read sees now (the deadline checked for a TTL key).
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table_of(key))?;
        let Some(g) = table.get(key)? else {
            return Ok(None);
        };
        let r = g.value();
        if key.starts_with(TTL_TREE_PREFIX) {
            return Ok(live(record_deadline(r), unix_millis).then(|| r[8..].to_vec()));
        }
        Ok(Some(r.to_vec()))
    }
}

/// Inside a write transaction: the current value of any key, as a read
/// sees it.
fn tx_current(txn: &WriteTransaction, key: &[u8], now: u64) -> Result<Option<Vec<u8>>> {
    let table = txn.open_table(table_of(key))?;
    if key.starts_with(TTL_TREE_PREFIX) {
        return Ok(get_expiring(&table, key, now)?.map(|(_, v)| v));
    }
    let value = table.get(key)?.map(|g| g.value().to_vec());
    Ok(value)
}

/// Inside a write transaction: a plain write (no deadline) of any key.
fn tx_put(txn: &WriteTransaction, key: &[u8], value: Option<&[u8]>, deadline: u64) -> Result<()> {
    if key.starts_with(TTL_TREE_PREFIX) {
        let mut values = txn.open_table(EXPIRING)?;
        let mut index = txn.open_table(DEADLINES)?;
        return put_expiring(&mut values, &mut index, key, value, deadline);
    }
    let mut table = txn.open_table(table_of(key))?;
    match value {
        Some(v) => drop(table.insert(key, v)?),
        None => drop(table.remove(key)?),
    }
    Ok(())
}

impl Target for RedbTarget {
    type Val = Vec<u8>;
    type Handle = ();

    fn open(dir: &Path, _tuning: &Tuning) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = file(dir);
        // The previous `Database` of this file may still be letting go of
        // its lock: retry briefly.
        let started = std::time::Instant::now();
        let db = loop {
            match Database::create(&path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if started.elapsed() < Duration::from_secs(10) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("opening redb at {}", path.display()))
                }
            }
        };
        // Every table exists from the start, so that reads can open them.
        write(&db, Durability::Immediate, |txn| {
            for def in [MAIN, SECOND, EXPIRING, DEADLINES] {
                txn.open_table(def)?;
            }
            Ok(())
        })
        .context("creating redb's tables")?;
        let t = RedbTarget {
            db: Arc::new(db),
            sweeper: OnceLock::new(),
        };
        if t.ttl_entries()? > 0 {
            t.start_sweeper()?;
        }
        Ok(t)
    }

    fn reopen(dir: &Path, tuning: &Tuning, (): ()) -> Result<Self> {
        RedbTarget::open(dir, tuning)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read(key)
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        // A plain set of a TTL key clears its deadline (as in millpond).
        self.write(|txn| tx_put(txn, key, Some(value), 0))
    }

    /// One write transaction. As millpond for a TTL key: a live key keeps
    /// its deadline, an expired key is `None`, a created key has no
    /// deadline.
    fn modify<R>(&self, key: &[u8], mut f: impl FnMut(&mut Option<Vec<u8>>) -> R) -> Result<R> {
        self.write(|txn| {
            let now = unix_millis();
            let (mut value, deadline) = if key.starts_with(TTL_TREE_PREFIX) {
                let values = txn.open_table(EXPIRING)?;
                match get_expiring(&values, key, now)? {
                    Some((d, v)) => (Some(v), d),
                    None => (None, 0),
                }
            } else {
                (tx_current(txn, key, now)?, 0)
            };
            let r = f(&mut value);
            tx_put(txn, key, value.as_deref(), deadline)?;
            Ok(r)
        })
    }

    /// One write transaction: every check, then every write (a failed check
    /// aborts it).
    fn apply(&self, changes: &[Change<'_>]) -> Result<Atomicity> {
        self.write(|txn| {
            let now = unix_millis();
            for c in changes {
                let current = tx_current(txn, c.key, now)?;
                if !c.expect.matches(current.as_deref()) {
                    return Err(expect_failed(c.key, &c.expect, current.as_deref()));
                }
            }
            for c in changes {
                tx_put(txn, c.key, c.new, 0)?;
            }
            Ok(Atomicity::Atomic)
        })
    }

    fn set_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        if !key.starts_with(TTL_TREE_PREFIX) {
            return Err(Unsupported("the redb baseline gives TTLs only to keys under ttl/").into());
        }
        self.start_sweeper()?;
        self.write(|txn| {
            let deadline = deadline_after(unix_millis(), ttl);
            tx_put(txn, key, Some(value), deadline)
        })
    }

    fn ttl_entries(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(DEADLINES)?.len()?)
    }

    /// An empty commit with `Durability::Immediate`: it makes every earlier
    /// non-durable commit durable.
    fn sync(&self) -> Result<()> {
        write(&self.db, Durability::Immediate, |_| Ok(())).context("redb durable commit")
    }

    fn close(self) -> Result<Closed<()>> {
        let RedbTarget { db, sweeper } = self;
        // The sweeper first (it holds a handle on the database), so that its
        // last deletions are made durable too.
        finish_sweeper(sweeper)?;
        write(&db, Durability::Immediate, |_| Ok(())).context("redb durable commit")?;
        let db = Arc::into_inner(db)
            .context("the redb database is still shared after its sweeper stopped")?;
        db.close().context("closing redb")?;
        Ok(Closed {
            handle: (),
            engine: None,
        })
    }
}
