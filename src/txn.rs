//! [`Transaction`]: what a multi-key transaction sees and commits.
//!
//! Concurrency control is optimistic:
//! - **Reads** are recorded with the version they saw (the seq of the write
//!   that produced a live value; for an absent key, the tombstone's seq if
//!   one was in memory, and the shard's generation). Every read that follows
//!   a write anywhere in the engine re-validates the reads made before it,
//!   so an attempt always sees one consistent state (it never observes half
//!   of another transaction, even in an attempt that will be retried).
//! - **Writes** are buffered in the transaction.
//! - **Commit** locks the shards of every key read or written, in increasing
//!   shard index (the global lock order: no deadlock), validates every read
//!   again, and inserts every write, then unlocks. A flush cycle freezes under
//!   all shard locks, so it sees all of a transaction's writes or none.
//! - **Retry**: a failed validation retries the closure, with backoff; after
//!   [`EXCLUSIVE_AFTER`] failed attempts the transaction takes the exclusive
//!   lane (one such transaction at a time, so they cannot keep invalidating
//!   each other); after [`MAX_ATTEMPTS`] it fails with [`Error::Conflict`].
//!
//! Validation is exact for live values (seqs are unique) and conservative for
//! absent ones: an absent key whose shard was flushed since the read counts
//! as changed.

use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::MutexGuard;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::access::{deadline_after, WAIT};
use crate::buffer::dirty::{cost_of, Shard};
use crate::buffer::{Seq, Slot};
use crate::clock::UnixMillis;
use crate::error::{Error, Result};
use crate::journal::format::MAX_BODY;
use crate::lookup::live;
use crate::shared::Shared;
use crate::stats::Counters;
use crate::tree::{decode, encode, Keyspace, Tree, DEFAULT};
use crate::value::Value;

/// Failed attempts after which a transaction takes the exclusive lane.
pub(crate) const EXCLUSIVE_AFTER: u32 = 8;
/// Attempts after which a transaction gives up with [`Error::Conflict`].
pub(crate) const MAX_ATTEMPTS: u32 = 1000;

thread_local! {
    static IN_TRANSACTION: Cell<bool> = const { Cell::new(false) };
    static JITTER: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
}

/// What a read saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Version {
    /// A live value written by this seq.
    Live(Seq),
    /// No live value: `seq` of the dirty entry that said so (tombstone or
    /// expired value), if one was in memory; `generation` of the shard then.
    Absent { seq: Option<Seq>, generation: u64 },
}

#[derive(Debug, Clone)]
struct Read {
    value: Option<Bytes>,
    version: Version,
    deadline: Option<UnixMillis>,
    /// Read from storage, with the shard at this generation.
    stored: Option<u64>,
    /// The cache token at the read (`Seen::token`): on a store other
    /// engines write, a read the commit finds answered by storage holds only
    /// if the token is the same then.
    token: Option<u64>,
}

#[derive(Debug, Clone)]
struct Write {
    slot: Slot,
    deadline: Option<UnixMillis>,
}

/// A transaction in progress, handed to the closure of
/// [`Engine::transaction`](crate::Engine::transaction).
///
/// Reads see the transaction's own writes, then a consistent state of the
/// engine. Nothing is visible to others until the closure returns `Ok` and the
/// commit succeeds.
pub struct Transaction<'a> {
    shared: &'a Shared,
    reads: HashMap<Box<[u8]>, Read>,
    writes: HashMap<Box<[u8]>, Write>,
    /// The engine's last seq when the reads were last validated.
    validated_at: Seq,
    /// A read found an earlier read out of date: this attempt cannot commit.
    conflicted: bool,
}

impl<'a> Transaction<'a> {
    fn new(shared: &'a Shared) -> Transaction<'a> {
        Transaction {
            shared,
            reads: HashMap::new(),
            writes: HashMap::new(),
            validated_at: shared.buffer.last_seq(),
            conflicted: false,
        }
    }

    /// The view of this transaction over `tree` (a tree of the same
    /// engine): its reads and writes are part of this transaction, committed
    /// atomically with the rest. Returns [`Error::ForeignTree`] for a tree of
    /// another engine.
    pub fn tree<'t>(&'t mut self, tree: &Tree) -> Result<TransactionTree<'t, 'a>> {
        if !std::ptr::eq(tree.engine().shared(), self.shared) {
            return Err(Error::ForeignTree);
        }
        Ok(TransactionTree {
            tx: self,
            ks: tree.keyspace().clone(),
        })
    }

    /// The value of `key` as this transaction sees it: its own write if it
    /// made one, else the engine's (expired values are absent). Reading the
    /// same key again returns the same value.
    ///
    /// Returns [`Error::Conflict`] if another writer changed something this
    /// transaction read earlier; pass it on with `?` (the attempt is retried).
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        self.get_in(&DEFAULT, key)
    }

    /// Sets `key` to `value` when the transaction commits (clearing any
    /// deadline, or giving `Config::default_ttl`, like [`Engine::set`](crate::Engine::set)).
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.set_in(&DEFAULT, key, value)
    }

    /// Sets `key` to `value`, to expire `ttl` from now, when the transaction
    /// commits.
    pub fn set_with_ttl(&mut self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.set_with_ttl_in(&DEFAULT, key, value, ttl)
    }

    /// Deletes `key` when the transaction commits. Returns `true` if it has a
    /// live value (as this transaction sees it).
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        self.delete_in(&DEFAULT, key)
    }

    /// Reads `key`, lets `f` change its value (`None`: absent; set it to
    /// `None` to delete), and writes the result when the transaction
    /// commits, keeping the key's deadline (a key `f` creates gets
    /// `Config::default_ttl`). Nothing is written if `f` leaves the value as
    /// it was. Returns what `f` returns. `f` runs once per attempt.
    pub fn modify<R>(
        &mut self,
        key: &[u8],
        f: impl FnOnce(&mut Option<Vec<u8>>) -> R,
    ) -> Result<R> {
        self.modify_in(&DEFAULT, key, f)
    }

    /// [`Transaction::get`], decoding the value with postcard.
    pub fn get_as<T: DeserializeOwned>(&mut self, key: &[u8]) -> Result<Option<T>> {
        self.get_as_in(&DEFAULT, key)
    }

    /// [`Transaction::set`], encoding the value with postcard.
    pub fn set_as<T: Serialize + ?Sized>(&mut self, key: &[u8], value: &T) -> Result<()> {
        self.set_in(&DEFAULT, key, &encode(value)?)
    }

    /// The time `key` has left before it expires, as this transaction sees
    /// it (`None`: no deadline, or no live value).
    pub fn ttl(&mut self, key: &[u8]) -> Result<Option<Duration>> {
        self.ttl_in(&DEFAULT, key)
    }

    /// Gives `key` a new deadline, `ttl` from now, when the transaction
    /// commits. Returns `false` (nothing written) if it has no live value.
    pub fn expire(&mut self, key: &[u8], ttl: Duration) -> Result<bool> {
        self.expire_in(&DEFAULT, key, ttl)
    }

    fn get_in(&mut self, ks: &Keyspace, key: &[u8]) -> Result<Option<Value>> {
        Ok(self.read_in(ks, key)?.0)
    }

    /// The value and deadline of `key` as this transaction sees it.
    fn read_in(
        &mut self,
        ks: &Keyspace,
        key: &[u8],
    ) -> Result<(Option<Value>, Option<UnixMillis>)> {
        self.shared.check_key(key)?;
        if self.conflicted {
            return Err(conflict(0));
        }
        let ik = ks.key(key);
        let key: &[u8] = &ik;
        if let Some(w) = self.writes.get(key) {
            return Ok(match &w.slot {
                Slot::Value(v) if live(w.deadline, || self.shared.now()) => {
                    (Some(Value(v.clone())), w.deadline)
                }
                _ => (None, None),
            });
        }
        if let Some(r) = self.reads.get(key) {
            let value = r.value.clone().map(Value);
            let deadline = value.as_ref().and(r.deadline);
            return Ok((value, deadline));
        }
        let read = self.read(key).map_err(|e| ks.user_error(e))?;
        let value = read.value.clone().map(Value);
        let deadline = value.as_ref().and(read.deadline);
        self.reads.insert(Box::from(key), read);
        self.revalidate()?;
        Ok((value, deadline))
    }

    fn set_in(&mut self, ks: &Keyspace, key: &[u8], value: &[u8]) -> Result<()> {
        let deadline = self.shared.default_deadline();
        self.put(ks, key, value, deadline)
    }

    fn set_with_ttl_in(
        &mut self,
        ks: &Keyspace,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<()> {
        let deadline = Some(deadline_after(self.shared.now(), ttl));
        self.put(ks, key, value, deadline)
    }

    fn delete_in(&mut self, ks: &Keyspace, key: &[u8]) -> Result<bool> {
        let live = self.get_in(ks, key)?.is_some();
        if live {
            self.writes.insert(
                Box::from(&*ks.key(key)),
                Write {
                    slot: Slot::Tombstone,
                    deadline: None,
                },
            );
        }
        Ok(live)
    }

    fn modify_in<R>(
        &mut self,
        ks: &Keyspace,
        key: &[u8],
        f: impl FnOnce(&mut Option<Vec<u8>>) -> R,
    ) -> Result<R> {
        let (old, deadline) = self.read_in(ks, key)?;
        let mut value = old.as_ref().map(|v| v.to_vec());
        let r = f(&mut value);
        match (value, old) {
            (None, None) => {}
            (None, Some(_)) => {
                self.delete_in(ks, key)?;
            }
            (Some(v), Some(o)) if o[..] == v[..] => {}
            (Some(v), old) => {
                let deadline = match old {
                    Some(_) => deadline,
                    None => self.shared.default_deadline(),
                };
                self.put(ks, key, &v, deadline)?;
            }
        }
        Ok(r)
    }

    fn get_as_in<T: DeserializeOwned>(&mut self, ks: &Keyspace, key: &[u8]) -> Result<Option<T>> {
        match self.get_in(ks, key)? {
            None => Ok(None),
            Some(v) => decode(key, &v).map(Some),
        }
    }

    fn ttl_in(&mut self, ks: &Keyspace, key: &[u8]) -> Result<Option<Duration>> {
        let (_, deadline) = self.read_in(ks, key)?;
        let now = self.shared.now();
        Ok(deadline.map(|d| Duration::from_millis(d.0.saturating_sub(now.0))))
    }

    fn expire_in(&mut self, ks: &Keyspace, key: &[u8], ttl: Duration) -> Result<bool> {
        let (value, _) = self.read_in(ks, key)?;
        let Some(value) = value else {
            return Ok(false);
        };
        let deadline = Some(deadline_after(self.shared.now(), ttl));
        self.put(ks, key, &value, deadline)?;
        Ok(true)
    }

    fn put(
        &mut self,
        ks: &Keyspace,
        key: &[u8],
        value: &[u8],
        deadline: Option<UnixMillis>,
    ) -> Result<()> {
        self.shared.check_key(key)?;
        self.shared.check_value(value.len())?;
        self.writes.insert(
            Box::from(&*ks.key(key)),
            Write {
                slot: Slot::Value(Bytes::copy_from_slice(value)),
                deadline,
            },
        );
        Ok(())
    }

    /// Reads `key` from the engine (the read path, `Shared::lookup`),
    /// recording what it saw.
    fn read(&self, key: &[u8]) -> Result<Read> {
        let seen = self.shared.lookup_tokened(key, true)?;
        let (version, deadline) = match &seen.found {
            Some(f) => (Version::Live(f.seq), f.deadline),
            None => (
                Version::Absent {
                    seq: seen.dirty_seq,
                    generation: seen.generation,
                },
                None,
            ),
        };
        let stored = seen.dirty_seq.is_none().then_some(seen.generation);
        let token = seen.token;
        Ok(Read {
            value: seen.into_value(),
            version,
            deadline,
            stored,
            token,
        })
    }

    /// If anything was written since the last validation, checks that every
    /// read still holds (each under its shard's lock). Together with the read
    /// just made, they then describe the engine at one instant.
    fn revalidate(&mut self) -> Result<()> {
        let s = self.shared;
        let last = s.buffer.last_seq();
        if last == self.validated_at {
            return Ok(());
        }
        self.validated_at = last;
        for (key, read) in &self.reads {
            let shard = s.buffer.lock(s.buffer.shard_of(key));
            if !still_valid(s, &shard, key, read)? {
                self.conflicted = true;
                return Err(conflict(0));
            }
        }
        Ok(())
    }

    /// Validates and applies the transaction atomically. Returns `false` on a
    /// conflict (nothing was written).
    fn commit(self) -> Result<bool> {
        let s = self.shared;
        if self.conflicted {
            return Ok(false);
        }
        if self.writes.is_empty() {
            // Read-only: the reads were validated as they were made, so they
            // describe one instant; nothing to apply.
            return Ok(true);
        }
        let incoming: usize = self
            .writes
            .iter()
            .map(|(k, w)| cost_of(k.len(), &w.slot))
            .sum();
        if s.buffer.journal().is_some() && incoming > MAX_BODY {
            // One journal record holds the transaction's writes (each
            // write's cost is more than its part of the record).
            return Err(Error::TooLarge {
                what: "transaction (its journal record)",
                len: incoming,
                max: MAX_BODY,
            });
        }
        for key in self.writes.keys() {
            s.keeper.claim(key, true)?;
        }
        let mut reserved = s.admit(incoming)?;
        let mut indexes: Vec<usize> = self
            .reads
            .keys()
            .chain(self.writes.keys())
            .map(|k| s.buffer.shard_of(k))
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        // `guards` is sorted by shard index and holds every shard needed.
        let guard_of = |guards: &[(usize, MutexGuard<'_, Shard>)], key: &[u8]| {
            let i = s.buffer.shard_of(key);
            guards.partition_point(|(j, _)| *j < i)
        };
        let mut guards = loop {
            // Lock order: increasing shard index.
            let guards: Vec<(usize, MutexGuard<'_, Shard>)> =
                indexes.iter().map(|&i| (i, s.buffer.lock(i))).collect();
            s.check_open()?;
            // A key this commit writes that a read-modify-write holds gets
            // that write first: wait for it without locks or reservation,
            // then lock again (validation then sees its write).
            let held = self
                .writes
                .keys()
                .find_map(|k| s.buffer.held(&guards[guard_of(&guards, k)].1, k));
            match held {
                None => {
                    // Every key it writes must be this engine's to write
                    // now (under the locks its writes go in under).
                    let mut unclaimed = None;
                    for k in self.writes.keys() {
                        if s.admit_write(&guards[guard_of(&guards, k)].1, k, None)?
                            .is_none()
                        {
                            unclaimed = Some(k);
                            break;
                        }
                    }
                    let Some(k) = unclaimed else {
                        break guards;
                    };
                    drop(guards);
                    s.keeper.claim(k, true)?;
                }
                Some(held) => {
                    drop(guards);
                    drop(reserved);
                    s.buffer.wait_unheld(held, WAIT);
                    reserved = s.admit(incoming)?;
                }
            }
        };
        for (key, read) in &self.reads {
            if !still_valid(s, &guards[guard_of(&guards, key)].1, key, read)? {
                return Ok(false);
            }
        }
        // `incoming` is every write's whole cost: the reservation covers
        // whatever each insert adds.
        let writes = self
            .writes
            .into_iter()
            .map(|(k, w)| (k, w.slot, w.deadline))
            .collect();
        let inserted = s.buffer.insert_all(&mut guards, writes, &mut reserved);
        drop(guards);
        drop(reserved);
        s.acknowledge(&inserted)?;
        Ok(true)
    }
}

/// Whether `read` still describes `key` (its shard is locked by the caller).
fn still_valid(s: &Shared, shard: &Shard, key: &[u8], read: &Read) -> Result<bool> {
    let now = s.now();
    Ok(match (shard.get(key), &read.version) {
        (Some(e), Version::Live(seq)) => {
            e.seq == *seq && !matches!(e.slot, Slot::Tombstone) && live(e.deadline, || now)
        }
        (Some(e), Version::Absent { seq, .. }) => {
            *seq == Some(e.seq) && (matches!(e.slot, Slot::Tombstone) || !live(e.deadline, || now))
        }
        // On a store other engines write, a storage answer holds only under
        // the cache token it was read under: the key's partition may have
        // left this engine and come back since (another engine's write in
        // between), or been taken since (the read was another engine's
        // data). A transaction retried reads under the token of now. (A
        // read of a partition this engine did not hold then and does not
        // now keeps the generation check: not serializable across
        // engines, see DESIGN.md, "Leases".)
        (None, _) if !s.keeper.exclusive() && s.keeper.cache_token(key) != read.token => false,
        // Nothing in memory: storage changed only if the shard's generation
        // moved. For an absent key that is taken as a change.
        (None, Version::Absent { generation, .. }) => shard.generation() == *generation,
        (None, Version::Live(seq)) => match read.stored {
            Some(generation) if generation == shard.generation() => live(read.deadline, || now),
            _ => s
                .read_record(key)?
                .is_some_and(|f| f.seq == *seq && live(f.deadline, || now)),
        },
    })
}

fn conflict(attempts: u32) -> Error {
    Error::Conflict { attempts }
}

fn backoff(attempt: u32) {
    if attempt <= 2 {
        std::thread::yield_now();
        return;
    }
    let jitter = JITTER.with(|j| {
        let mut x = j.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        j.set(x);
        x
    });
    let base = 10u64 << (attempt - 3).min(7); // 10 us .. 1.28 ms
    std::thread::sleep(Duration::from_micros(base + jitter % base));
}

struct InTransaction;

impl InTransaction {
    fn enter() -> Result<InTransaction> {
        if IN_TRANSACTION.with(|t| t.replace(true)) {
            return Err(Error::Reentrant);
        }
        Ok(InTransaction)
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        IN_TRANSACTION.with(|t| t.set(false));
    }
}

/// Runs `f` as a transaction: see [`Engine::transaction`](crate::Engine::transaction).
pub(crate) fn run<R, E: From<Error>>(
    shared: &Shared,
    mut f: impl FnMut(&mut Transaction<'_>) -> std::result::Result<R, E>,
) -> std::result::Result<R, E> {
    let _in = InTransaction::enter()?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        shared.check_open()?;
        let _lane = (attempt > EXCLUSIVE_AFTER).then(|| shared.txn_lane.lock());
        let mut tx = Transaction::new(shared);
        let outcome = f(&mut tx);
        match outcome {
            Err(e) if !tx.conflicted => return Err(e),
            Err(_) => {}
            Ok(r) => {
                if tx.commit()? {
                    Counters::add(&shared.counters.transactions, 1);
                    return Ok(r);
                }
            }
        }
        Counters::add(&shared.counters.transaction_retries, 1);
        if attempt >= MAX_ATTEMPTS {
            return Err(conflict(attempt).into());
        }
        drop(_lane);
        backoff(attempt);
    }
}

/// A transaction's view of one [`Tree`], from [`Transaction::tree`]: the
/// same verbs as [`Transaction`], over the tree's keys, in the same
/// transaction.
pub struct TransactionTree<'t, 'a> {
    tx: &'t mut Transaction<'a>,
    ks: Keyspace,
}

impl TransactionTree<'_, '_> {
    /// [`Transaction::get`] in this tree.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        self.tx.get_in(&self.ks, key)
    }

    /// [`Transaction::set`] in this tree.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tx.set_in(&self.ks, key, value)
    }

    /// [`Transaction::set_with_ttl`] in this tree.
    pub fn set_with_ttl(&mut self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.tx.set_with_ttl_in(&self.ks, key, value, ttl)
    }

    /// [`Transaction::delete`] in this tree.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        self.tx.delete_in(&self.ks, key)
    }

    /// [`Transaction::modify`] in this tree.
    pub fn modify<R>(
        &mut self,
        key: &[u8],
        f: impl FnOnce(&mut Option<Vec<u8>>) -> R,
    ) -> Result<R> {
        self.tx.modify_in(&self.ks, key, f)
    }

    /// [`Transaction::get_as`] in this tree.
    pub fn get_as<T: DeserializeOwned>(&mut self, key: &[u8]) -> Result<Option<T>> {
        self.tx.get_as_in(&self.ks, key)
    }

    /// [`Transaction::set_as`] in this tree.
    pub fn set_as<T: Serialize + ?Sized>(&mut self, key: &[u8], value: &T) -> Result<()> {
        self.tx.set_in(&self.ks, key, &encode(value)?)
    }

    /// [`Transaction::ttl`] in this tree.
    pub fn ttl(&mut self, key: &[u8]) -> Result<Option<Duration>> {
        self.tx.ttl_in(&self.ks, key)
    }

    /// [`Transaction::expire`] in this tree.
    pub fn expire(&mut self, key: &[u8], ttl: Duration) -> Result<bool> {
        self.tx.expire_in(&self.ks, key, ttl)
    }
}

/// What [`Engine::try_transaction`](crate::Engine::try_transaction) and its
/// closure return on failure: the closure's own abort, or an engine error.
///
/// Inside the closure, `?` on the transaction's verbs turns their errors into
/// [`TransactionError::Engine`] (an [`Error::Conflict`] among them makes the
/// attempt run again); return `Err(TransactionError::Abort(e))` to stop,
/// write nothing, and get `e` back from the call.
#[derive(Debug)]
pub enum TransactionError<E> {
    /// The closure aborted the transaction with its own error.
    Abort(E),
    /// The engine failed (or the transaction kept conflicting).
    Engine(Error),
}

impl<E> From<Error> for TransactionError<E> {
    fn from(e: Error) -> TransactionError<E> {
        TransactionError::Engine(e)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for TransactionError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransactionError::Abort(e) => write!(f, "transaction aborted: {e}"),
            TransactionError::Engine(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for TransactionError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransactionError::Abort(e) => Some(e),
            TransactionError::Engine(e) => Some(e),
        }
    }
}
