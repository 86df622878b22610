//! [`Engine`]: the public handle and its verbs.
//!
//! An `Engine` is a cheap clone of an `Arc<Handle>`. The `Handle` owns the
//! flusher threads; dropping the last `Engine` drops the `Handle`, which runs
//! the same path as [`Engine::shutdown`]. The threads hold only `Arc<Shared>`,
//! so they never keep the handle alive.
//!
//! The verbs check their arguments and call the read path (`lookup.rs`), or
//! the write path and read-modify-write (`access.rs`).

use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::access::{deadline_after, Change};
use crate::buffer::{DirtyMap, Seq, Slot};
use crate::clock::UnixMillis;
use crate::config::Config;
use crate::durability::Durability;
use crate::error::{Error, Result};
use crate::flush::cycle::Cycles;
use crate::flush::{FlushControl, Flusher};
use crate::iter::{key_range, Iter, KeyRange};
use crate::lookup::Found;
use crate::purger::Purger;
use crate::recovery;
use crate::shared::Shared;
use crate::stats::{Checkpoint, Counters, Stats};
use crate::storage::{self, keeper::Keeper};
use crate::txn::{self, Transaction};
use crate::value::Value;
use crate::verify::VerifyReport;
use crate::watch::{Subscriber, Watchers};

thread_local! {
    /// Depth of engine closures (`modify`) running on this thread. Engine
    /// calls made from inside one would deadlock on the shard lock the
    /// closure runs under, so they are refused with [`Error::Reentrant`].
    static IN_CLOSURE: Cell<u32> = const { Cell::new(0) };
}

struct ClosureGuard;

impl ClosureGuard {
    fn enter() -> ClosureGuard {
        IN_CLOSURE.with(|c| c.set(c.get() + 1));
        ClosureGuard
    }
}

impl Drop for ClosureGuard {
    fn drop(&mut self) {
        IN_CLOSURE.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

fn in_closure() -> bool {
    IN_CLOSURE.with(|c| c.get() > 0)
}

fn not_reentrant() -> Result<()> {
    if in_closure() {
        Err(Error::Reentrant)
    } else {
        Ok(())
    }
}

/// A handle to an open store. Cheap to clone; clones share one engine and may
/// be used from any thread.
///
/// See the [crate documentation](crate) for an overview and the durability
/// contract.
#[derive(Clone)]
pub struct Engine {
    handle: Arc<Handle>,
}

/// Owner of the flusher threads; its drop is the engine's shutdown.
struct Handle {
    shared: Arc<Shared>,
    lifecycle: Mutex<Lifecycle>,
}

enum Lifecycle {
    Running(Flusher, Purger),
    /// Shut down, with the outcome of the final flush.
    Stopped(Result<()>),
}

impl Engine {
    /// Opens the store in `config`'s directory, creating it if the directory
    /// is missing or empty.
    ///
    /// Errors: [`Error::Config`] for an invalid configuration,
    /// [`Error::Locked`] if another engine holds the store,
    /// [`Error::NotAStore`] for a directory holding something else,
    /// [`Error::UnsupportedFormat`] for a store from an unknown format
    /// version, [`Error::Corrupt`] or [`Error::Io`] for damaged files.
    pub fn open(config: Config) -> Result<Engine> {
        config.validate()?;
        // Resolved once, so a later change of working directory cannot move
        // the store.
        let dir = std::path::absolute(&config.dir)?;
        let backend = storage::backend(&config, &dir);
        let (keeper, recovered) =
            Keeper::open(backend, config.faults.clone(), config.accept_data_loss)?;
        let buffer = DirtyMap::new(recovered.last_seq, config.max_dirty_bytes);
        recovery::load_deadlines(&*keeper.storage()?, &buffer)?;
        let shared = Arc::new(Shared {
            dir,
            keeper,
            buffer,
            counters: Counters::default(),
            flush: FlushControl::new(),
            watchers: Watchers::default(),
            txn_lane: Mutex::new(()),
            cycle_lock: Mutex::new(()),
            closed: Default::default(),
            config,
        });
        Counters::set_max(&shared.counters.flushed_seq, recovered.last_seq.0);
        Counters::set_max(&shared.counters.durable_seq, recovered.last_seq.0);
        let cycles = Cycles::new(&recovered);
        let flusher = Flusher::start(&shared, cycles)?;
        let purger = Purger::start(&shared)?;
        Ok(Engine {
            handle: Arc::new(Handle {
                shared,
                lifecycle: Mutex::new(Lifecycle::Running(flusher, purger)),
            }),
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Refuses a page of an iteration from inside a closure or after
    /// shutdown.
    pub(crate) fn check_iterable(&self) -> Result<()> {
        not_reentrant()?;
        self.shared().check_open()
    }

    /// The value of `key`, or `None` if it has none (never set, deleted, or
    /// expired). Sees every write acknowledged before the call, from any
    /// thread, whether flushed or not.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        not_reentrant()?;
        let s = self.shared();
        s.check_key(key)?;
        s.check_open()?;
        Ok(s.read(key)?.map(|(v, _)| Value(v)))
    }

    /// Sets `key` to `value`. Any deadline the key had is cleared (it gets
    /// `Config::default_ttl` if one is set). Returns once the write is
    /// visible to every reader; it reaches disk within `write_delay` plus one
    /// flush cycle, or at the next [`Engine::checkpoint`].
    ///
    /// Waits while the buffer is full (`max_dirty_bytes`). Errors:
    /// [`Error::TooLarge`], [`Error::Closed`], and [`Error::FlushFailing`] or
    /// [`Error::Poisoned`] when the engine cannot persist writes.
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.put(key, value, Shared::default_deadline).map(drop)
    }

    /// [`Engine::set`], returning only once the write is as durable as
    /// `durability` asks: [`Durability::Buffered`] is `set`;
    /// [`Durability::Flushed`] waits for the flush cycle that covers the
    /// write (it survives a crash of the process); [`Durability::Synced`]
    /// waits for the durable cycle that covers it (it survives a power cut).
    /// Concurrent callers share one cycle (group commit): many writers
    /// asking for `Synced` at once cost one fsync, not one each. A waiting
    /// writer starts a cycle at once, without waiting for `write_delay`.
    ///
    /// On an error from the wait (a failed flush, [`Error::Poisoned`],
    /// [`Error::Closed`] by a concurrent shutdown) the write has still been
    /// made and is visible; only its durability is not confirmed.
    pub fn set_with(&self, key: &[u8], value: &[u8], durability: Durability) -> Result<()> {
        let seq = self.put(key, value, Shared::default_deadline)?;
        self.shared().wait_for(seq, durability)
    }

    /// Sets `key` to `value`, to expire `ttl` from now (by the engine's
    /// clock). Once the deadline passes the key is absent to every read, and
    /// the purger deletes it from memory and disk. A zero `ttl` expires the
    /// key at once.
    pub fn set_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.put(key, value, |s| Some(deadline_after(s.now(), ttl)))
            .map(drop)
    }

    /// Whether `key` has a live value. Cheaper than [`Engine::get`] for a
    /// value in the blob tree: the value is not loaded.
    pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
        not_reentrant()?;
        let s = self.shared();
        s.check_key(key)?;
        s.check_open()?;
        Ok(s.lookup(key, false)?.found.is_some())
    }

    /// Sets `key` to `value`, like [`Engine::set`] (the deadline is cleared,
    /// or `Config::default_ttl` given), and returns the value it replaced
    /// (`None` if there was no live value). The read and the write are one
    /// atomic step: no other write to `key` comes between them.
    pub fn replace(&self, key: &[u8], value: &[u8]) -> Result<Option<Value>> {
        not_reentrant()?;
        let s = self.shared();
        s.check_value(value.len())?;
        let value = Bytes::copy_from_slice(value);
        s.update(key, true, |found| {
            let old = found.map(|f| Value(Bytes::copy_from_slice(f.bytes())));
            let change = Change {
                slot: Slot::Value(value),
                deadline: s.default_deadline(),
            };
            Ok((Some(change), old))
        })
    }

    /// Sets `key` to `new` only if its live value is `expected`; `None` as
    /// `expected` means "absent", as `new` it deletes the key. Returns
    /// `true` when the value was as expected (and is now `new`), `false`
    /// otherwise (nothing written). Atomic with every other write to `key`
    /// (it decides under the same lock as `modify`). A key that keeps its
    /// value keeps its deadline; a key it creates gets
    /// `Config::default_ttl`, like [`Engine::modify`].
    pub fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        not_reentrant()?;
        let s = self.shared();
        if let Some(v) = new {
            s.check_value(v.len())?;
        }
        let new = new.map(Bytes::copy_from_slice);
        s.update(key, true, |found| {
            if found.as_ref().map(Found::bytes) != expected {
                return Ok((None, false));
            }
            let change = match (new, found) {
                (None, None) => None,
                (None, Some(_)) => Some(Change {
                    slot: Slot::Tombstone,
                    deadline: None,
                }),
                (Some(v), Some(f)) if f.bytes() == &v[..] => None,
                (Some(v), found) => Some(Change {
                    slot: Slot::Value(v),
                    deadline: match found {
                        Some(f) => f.deadline,
                        None => s.default_deadline(),
                    },
                }),
            };
            Ok((change, true))
        })
    }

    /// A blind write of a value, with the deadline `deadline` gives; returns
    /// its seq.
    fn put(
        &self,
        key: &[u8],
        value: &[u8],
        deadline: impl FnOnce(&Shared) -> Option<UnixMillis>,
    ) -> Result<Seq> {
        not_reentrant()?;
        let s = self.shared();
        s.check_key(key)?;
        s.check_value(value.len())?;
        s.write(key, Slot::Value(Bytes::copy_from_slice(value)), deadline(s))
    }

    /// Gives an existing key a new deadline, `ttl` from now, without
    /// rewriting its value (only its metadata record is written). Returns
    /// `false` if the key has no live value.
    pub fn expire(&self, key: &[u8], ttl: Duration) -> Result<bool> {
        not_reentrant()?;
        let s = self.shared();
        s.update(key, false, |found| {
            Ok(match found {
                Some(f) => (
                    Some(Change {
                        slot: f.slot(),
                        deadline: Some(deadline_after(s.now(), ttl)),
                    }),
                    true,
                ),
                None => (None, false),
            })
        })
    }

    /// Removes a key's deadline (it will not expire). Returns `true` if the
    /// key had a live value with a deadline.
    pub fn persist(&self, key: &[u8]) -> Result<bool> {
        not_reentrant()?;
        self.shared().update(key, false, |found| {
            Ok(match found {
                Some(f) if f.deadline.is_some() => (
                    Some(Change {
                        slot: f.slot(),
                        deadline: None,
                    }),
                    true,
                ),
                _ => (None, false),
            })
        })
    }

    /// The time `key` has left before it expires (whole milliseconds).
    /// `None` both when the key has no deadline and when it has no live
    /// value; use [`Engine::get`] to tell the two apart.
    pub fn ttl(&self, key: &[u8]) -> Result<Option<Duration>> {
        not_reentrant()?;
        let s = self.shared();
        s.check_key(key)?;
        s.check_open()?;
        let now = s.now();
        Ok(s.deadline_of(key)?
            .map(|d| Duration::from_millis(d.0.saturating_sub(now.0))))
    }

    /// Removes `key`. Returns `true` if it had a live value.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        not_reentrant()?;
        self.shared().update(key, false, |found| {
            Ok(match found {
                Some(_) => (
                    Some(Change {
                        slot: Slot::Tombstone,
                        deadline: None,
                    }),
                    true,
                ),
                None => (None, false),
            })
        })
    }

    /// Atomically reads, changes and writes the value of `key`.
    ///
    /// `f` gets the current value (`None` if there is none) and may change
    /// it; setting it to `None` deletes the key. No other write to `key`
    /// happens between the read and the write, so concurrent `modify` calls
    /// never lose an update. If `f` leaves the value as it was, nothing is
    /// written. A key's deadline is kept; a key that `f` creates gets
    /// `Config::default_ttl`, if set. An expired key is `None` to `f`.
    ///
    /// `f` runs while the engine holds a lock covering `key` and other keys:
    /// keep it short, and do not call the engine from it (such calls return
    /// [`Error::Reentrant`]). If `f` panics, nothing is written. If the new
    /// value needs room the buffer does not have, the call waits for it
    /// after `f` ran (without the lock; other writes of `key` wait for this
    /// one); if it then fails (for example [`Error::Closed`]), nothing is
    /// written.
    pub fn modify<R>(&self, key: &[u8], f: impl FnOnce(&mut Option<Vec<u8>>) -> R) -> Result<R> {
        not_reentrant()?;
        let s = self.shared();
        let max_value = s.config.value_limit();
        s.update(key, true, |found| {
            let mut value = found.as_ref().map(|c| c.bytes().to_vec());
            let r = {
                let _guard = ClosureGuard::enter();
                f(&mut value)
            };
            let change = match (value, found) {
                (None, None) => None,
                (None, Some(_)) => Some(Change {
                    slot: Slot::Tombstone,
                    deadline: None,
                }),
                (Some(v), Some(c)) if c.bytes() == &v[..] => None,
                (Some(v), found) => {
                    if v.len() > max_value {
                        return Err(Error::TooLarge {
                            what: "value",
                            len: v.len(),
                            max: max_value,
                        });
                    }
                    let deadline = match found {
                        Some(c) => c.deadline,
                        None => s.default_deadline(),
                    };
                    Some(Change {
                        slot: Slot::Value(Bytes::from(v)),
                        deadline,
                    })
                }
            };
            Ok((change, r))
        })
    }

    /// Runs `f` as a serializable transaction over any number of keys, and
    /// returns what it returns.
    ///
    /// Inside `f`, [`Transaction::get`] sees the transaction's own writes and
    /// otherwise one consistent state of the engine; [`Transaction::set`],
    /// [`Transaction::set_with_ttl`] and [`Transaction::delete`] take effect,
    /// all together, only if `f` returns `Ok` and the commit succeeds. The
    /// result is as if all committed transactions (and all other writes) had
    /// run one at a time. A flush cycle persists all of a transaction's writes
    /// or none of them.
    ///
    /// **`f` may run more than once**: when another writer changed something
    /// it read, the attempt is discarded and `f` runs again (after a short
    /// backoff). So `f` must have no effects outside the transaction. After
    /// 1000 failed attempts the call returns [`Error::Conflict`]; transactions
    /// that keep conflicting take an exclusive lane, one at a time, before
    /// that.
    ///
    /// If `f` returns `Err`, nothing is written and the error is returned.
    /// Starting a transaction inside `f` returns [`Error::Reentrant`].
    pub fn transaction<R>(&self, f: impl FnMut(&mut Transaction<'_>) -> Result<R>) -> Result<R> {
        not_reentrant()?;
        txn::run(self.shared(), f)
    }

    /// The live keys in `range` and their values, in key order; read from
    /// both ends with `next` and `next_back`. `engine.range(b"a".as_slice()..b"b")`,
    /// `engine.range::<&[u8], _>(..)`. Each page of up to 256 keys is one
    /// point in the write history; see [`Iter`] for what a concurrent write
    /// does to a running iteration. [`Iter::keys`] skips the values.
    pub fn range<K: AsRef<[u8]>, R: std::ops::RangeBounds<K>>(&self, range: R) -> Iter {
        Iter::new(self.clone(), key_range(&range), 0)
    }

    /// Every live key and its value, in key order (see [`Engine::range`]).
    pub fn iter(&self) -> Iter {
        Iter::new(self.clone(), KeyRange::prefix(b""), 0)
    }

    /// The live keys starting with `prefix` (every key for an empty prefix)
    /// and their values, in key order (see [`Engine::range`]).
    pub fn scan_prefix(&self, prefix: &[u8]) -> Iter {
        Iter::new(self.clone(), KeyRange::prefix(prefix), 0)
    }

    /// The live key with the smallest key, and its value.
    pub fn first(&self) -> Result<Option<(Value, Value)>> {
        self.iter().next().transpose()
    }

    /// The live key with the greatest key, and its value.
    pub fn last(&self) -> Result<Option<(Value, Value)>> {
        self.iter().next_back().transpose()
    }

    /// The number of live keys. Counted by iterating the keys (values are
    /// not loaded): it costs a pass over the store, and it is exact only
    /// when no write runs meanwhile (each page is one point in history, the
    /// whole count is not).
    pub fn len(&self) -> Result<usize> {
        let mut n = 0;
        for k in self.iter().keys() {
            k?;
            n += 1;
        }
        Ok(n)
    }

    /// Whether there is no live key (reads at most one page).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.iter().keys().next().transpose()?.is_none())
    }

    /// Subscribes to changes of the keys starting with `prefix` (every key
    /// for an empty prefix). Each change is told only once it is flushed
    /// (`Durability::Flushed`, and `Buffered`, which is served the same: a
    /// watcher never sees a change that is only in memory) or synced
    /// (`Durability::Synced`): never one that a crash (a power cut, for
    /// `Synced`) could take back.
    ///
    /// Events come per flush cycle, in seq order: for each key the newest
    /// write the cycle persisted (a write replaced before it was flushed is
    /// never an event), as a value or a removal (delete, expiry, purge). A
    /// `Synced` subscriber gets a cycle's events at the next sync (a
    /// checkpoint, a `Synced` write, shutdown). A subscriber that does not
    /// keep up never slows writers: past 16 384 queued events it gets
    /// [`Event::Lagged`](crate::Event::Lagged) in place of what was dropped.
    /// The subscriber ends after shutdown; dropping it unsubscribes.
    pub fn watch_prefix(&self, prefix: &[u8], durability: Durability) -> Result<Subscriber> {
        not_reentrant()?;
        let s = self.shared();
        s.check_key(prefix)?;
        s.check_open()?;
        s.watchers
            .subscribe(prefix, 0, durability)
            .ok_or(Error::Closed)
    }

    /// Checks everything stored: every metadata record and its checksum,
    /// every blob against its record, blobs that no record points at
    /// (orphans), the deadline index against the records, the gc and format
    /// records. Runs a checkpoint first, so the check covers every write
    /// acknowledged before the call; flush cycles wait while it reads, and
    /// writers go on. Reads the whole store: a tool, not a hot path.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.checkpoint()?;
        self.shared().verify(false)
    }

    /// [`Engine::verify`], then fixes what can be fixed without touching live
    /// data: removes orphan blobs, rewrites the deadline index where it
    /// disagrees with the records, and purges expired keys; then
    /// checkpoints. Corrupt records and records whose blob is missing are
    /// reported, never removed. The report lists what was found;
    /// `repaired` counts the fixes and purged keys.
    pub fn repair(&self) -> Result<VerifyReport> {
        self.checkpoint()?;
        let mut report = self.shared().verify(true)?;
        report.repaired += self.purge_expired()?;
        self.checkpoint()?;
        Ok(report)
    }

    /// [`Engine::get`], decoding the value with postcard. A value that does
    /// not decode as `T` is an [`Error::Decode`].
    pub fn get_as<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.get(key)? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v)
                .map(Some)
                .map_err(|e| Error::Decode {
                    key: key.to_vec(),
                    detail: e.to_string(),
                }),
        }
    }

    /// [`Engine::set`], encoding the value with postcard.
    pub fn set_as<T: Serialize + ?Sized>(&self, key: &[u8], value: &T) -> Result<()> {
        let bytes = postcard::to_stdvec(value).map_err(|e| Error::Encode(e.to_string()))?;
        self.set(key, &bytes)
    }

    /// Runs the expiry purger now, over every key: each key whose deadline
    /// has passed is deleted (from memory now, from disk at the next flush).
    /// Returns the number of keys purged. The background purger does the
    /// same every 100 ms in bounded slices; this is for callers that want it
    /// done at a known time (and for tests that move a mock clock).
    pub fn purge_expired(&self) -> Result<u64> {
        not_reentrant()?;
        let s = self.shared();
        s.check_open()?;
        Ok(s.purge(None))
    }

    /// Returns once every write acknowledged before the call is durable on
    /// disk (written, flushed and fsynced). Writers are not blocked while it
    /// runs; concurrent checkpoints share one flush cycle.
    ///
    /// On error nothing is claimed: buffered writes are kept and retried,
    /// except after a failed fsync, which poisons the engine
    /// ([`Error::Poisoned`]).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        not_reentrant()?;
        let s = self.shared();
        s.check_open()?;
        if s.health().is_poisoned() {
            return Err(s.health().poison_error());
        }
        let started = Instant::now();
        let rx = s.flush.request_sync()?;
        match rx.recv() {
            Ok(Ok((seq, entries))) => Ok(Checkpoint {
                seq: seq.0,
                flushed_entries: entries,
                duration: started.elapsed(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Stops accepting writes, persists and fsyncs everything buffered, joins
    /// every engine thread and closes the store (its lock is released, so it
    /// can be opened again). Afterwards every operation returns
    /// [`Error::Closed`].
    ///
    /// Idempotent: later calls return the outcome of the first. Dropping the
    /// last handle does the same, logging any error.
    pub fn shutdown(&self) -> Result<()> {
        not_reentrant()?;
        self.handle.shutdown()
    }

    /// The engine's counters.
    pub fn stats(&self) -> Stats {
        let s = self.shared();
        let (dirty_entries, writes, coalesced_writes) = if in_closure() {
            // A shard lock is held by this thread: count without blocking.
            s.buffer.counts_nonblocking()
        } else {
            s.buffer.counts()
        };
        let c = &s.counters;
        Stats {
            writes,
            coalesced_writes,
            flushes: Counters::get(&c.flushes),
            flushed_entries: Counters::get(&c.flushed_entries),
            dirty_entries,
            dirty_bytes: s.buffer.bytes(),
            peak_dirty_bytes: s.buffer.peak_bytes(),
            flush_errors: Counters::get(&c.flush_errors),
            storage_reopens: s.keeper.reopens(),
            last_flush_duration: c.last_flush(),
            syncs: Counters::get(&c.syncs),
            expired: Counters::get(&c.expired),
            transactions: Counters::get(&c.transactions),
            transaction_retries: Counters::get(&c.transaction_retries),
            ttl_keys: if in_closure() {
                0
            } else {
                s.buffer.deadlines()
            },
            blobs_written: Counters::get(&c.blobs_written),
            last_seq: s.buffer.last_seq().0,
            flushed_seq: Counters::get(&c.flushed_seq),
            durable_seq: Counters::get(&c.durable_seq),
        }
    }

    /// The store directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.shared().dir)
            .field("closed", &self.shared().closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Handle {
    fn shutdown(&self) -> Result<()> {
        let mut life = self.lifecycle.lock();
        if let Lifecycle::Stopped(outcome) = &*life {
            return match outcome {
                Ok(()) => Ok(()),
                Err(e) => Err(e.duplicate()),
            };
        }
        let s = &self.shared;
        // Every write checks `closed` under its shard lock, and the final
        // cycle's freeze takes every shard lock after this store: a write
        // either completed before the freeze (and is in it) or sees `closed`.
        s.closed.store(true, Ordering::SeqCst);
        s.buffer.wake_waiters();
        let rx = s.flush.request_shutdown();
        let flushed = match rx.recv() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Storage(
                "the flush coordinator stopped before the final flush".into(),
            )),
        };
        let previous = std::mem::replace(&mut *life, Lifecycle::Stopped(Ok(())));
        let joined = match previous {
            Lifecycle::Running(flusher, purger) => {
                let purger_ok = purger.stop();
                flusher.join().and(if purger_ok {
                    Ok(())
                } else {
                    Err(Error::Storage("the expiry purger thread panicked".into()))
                })
            }
            Lifecycle::Stopped(_) => Ok(()),
        };
        // Subscribers end; a `Synced` one gets what the final sync covered.
        s.watchers.close(flushed.is_ok());
        // Closing storage releases the store's lock.
        let closed = s.keeper.close();
        let outcome = flushed.and(joined).and(closed);
        *life = Lifecycle::Stopped(match &outcome {
            Ok(()) => Ok(()),
            Err(e) => Err(e.duplicate()),
        });
        outcome
    }
}

/// Test support (feature `testing`): simulates a crash of the process at a
/// flush-cycle boundary.
/// The engine stops at once: its threads exit without flushing the dirty
/// map, storage is closed, and every operation returns [`Error::Closed`].
/// Writes not yet flushed are lost, as in a crash.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub fn halt(engine: &Engine) {
    let h = &engine.handle;
    let mut life = h.lifecycle.lock();
    if let Lifecycle::Stopped(_) = &*life {
        return;
    }
    let s = &h.shared;
    s.closed.store(true, Ordering::SeqCst);
    s.buffer.wake_waiters();
    s.flush.request_halt();
    if let Lifecycle::Running(flusher, purger) =
        std::mem::replace(&mut *life, Lifecycle::Stopped(Ok(())))
    {
        purger.stop();
        if let Err(e) = flusher.join() {
            log::error!("millpond: halting: {e}");
        }
    }
    s.watchers.close(false);
    if let Err(e) = s.keeper.close() {
        log::error!("millpond: halting: {e}");
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!("millpond: shutdown on drop of the last handle failed: {e}");
        }
    }
}

const _: () = {
    const fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Engine>();
};
