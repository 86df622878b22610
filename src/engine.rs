//! [`Engine`]: the public handle and its verbs.
//!
//! An `Engine` is a cheap clone of an `Arc<Handle>`. The `Handle` owns the
//! flusher threads; dropping the last `Engine` drops the `Handle`, which runs
//! the same path as [`Engine::shutdown`]. The threads hold only `Arc<Shared>`,
//! so they never keep the handle alive.
//!
//! Read path: the key's shard (active, then frozen), then storage.
//! Write path: admission (health, closed, room in the buffer), then the
//! key's shard lock, then [`DirtyMap::insert`](crate::buffer::DirtyMap::insert).
//! Read-modify-write (`modify`, `delete`): the current value is found as in
//! the read path, and the change is made under the same shard lock that
//! showed it; if the value had to come from storage, the lock is released
//! for the read, and the read is trusted only if the shard's generation has
//! not moved meanwhile (otherwise it is read again).

use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::buffer::dirty::ENTRY_OVERHEAD;
use crate::buffer::{DirtyMap, Slot};
use crate::clock::UnixMillis;
use crate::codec::{self, ValueRef};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::flush::cycle::Cycles;
use crate::flush::{FlushControl, Flusher};
use crate::recovery;
use crate::shared::{BlobIds, Health, Shared};
use crate::stats::{Checkpoint, Counters, Stats};
use crate::storage::sled::SledStorage;
use crate::storage::Storage;
use crate::value::Value;

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
    Running(Flusher),
    /// Shut down, with the outcome of the final flush.
    Stopped(Result<()>),
}

/// A value as found in storage.
#[derive(Clone)]
struct Stored {
    value: Bytes,
    deadline: Option<UnixMillis>,
}

/// The live value of a key as a read-modify-write sees it.
struct Current {
    value: Bytes,
    deadline: Option<UnixMillis>,
}

/// What a read-modify-write decided to write.
struct Change {
    slot: Slot,
    deadline: Option<UnixMillis>,
}

fn live(deadline: Option<UnixMillis>, now: impl FnOnce() -> UnixMillis) -> bool {
    deadline.is_none_or(|d| d > now())
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
        let storage = SledStorage::open(&dir, config.cache_capacity)?;
        Engine::open_with(config, &dir, Arc::new(storage))
    }

    fn open_with(config: Config, dir: &Path, storage: Arc<dyn Storage>) -> Result<Engine> {
        let recovered = recovery::recover(&*storage, dir)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            storage: RwLock::new(Some(storage)),
            buffer: DirtyMap::new(recovered.last_seq),
            counters: Counters::default(),
            flush: FlushControl::new(),
            health: Health::default(),
            blobs: BlobIds::new(recovered.next_blob, recovered.blobs_exist),
            closed: Default::default(),
            config,
        });
        Counters::set_max(&shared.counters.flushed_seq, recovered.last_seq.0);
        Counters::set_max(&shared.counters.durable_seq, recovered.last_seq.0);
        let cycles = Cycles::new(recovered.last_seq, recovered.next_gc_id);
        let flusher = Flusher::start(&shared, cycles)?;
        Ok(Engine {
            handle: Arc::new(Handle {
                shared,
                lifecycle: Mutex::new(Lifecycle::Running(flusher)),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The value of `key`, or `None` if it has none (never set, deleted, or
    /// expired). Sees every write acknowledged before the call, from any
    /// thread, whether flushed or not.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        not_reentrant()?;
        let s = self.shared();
        s.check_key(key)?;
        s.check_open()?;
        let found = {
            let shard = s.buffer.lock(s.buffer.shard_of(key));
            shard.get(key).map(|e| (e.slot.clone(), e.deadline))
        };
        match found {
            Some((Slot::Value(v), deadline)) if live(deadline, || s.now()) => Ok(Some(Value(v))),
            Some(_) => Ok(None),
            None => Ok(s
                .read_stored(key)?
                .filter(|st| live(st.deadline, || s.now()))
                .map(|st| Value(st.value))),
        }
    }

    /// Sets `key` to `value`, replacing any deadline. Returns once the write
    /// is visible to every reader; it reaches disk within `write_delay` plus
    /// one flush cycle, or at the next [`Engine::checkpoint`].
    ///
    /// Waits while the buffer is full (`max_dirty_bytes`). Errors:
    /// [`Error::TooLarge`], [`Error::Closed`], and [`Error::FlushFailing`] or
    /// [`Error::Poisoned`] when the engine cannot persist writes.
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        not_reentrant()?;
        let s = self.shared();
        s.check_key(key)?;
        s.check_value(value.len())?;
        s.write(key, Slot::Value(Bytes::copy_from_slice(value)), None)
    }

    /// Removes `key`. Returns `true` if it had a live value.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        not_reentrant()?;
        self.shared().update(key, |current| {
            Ok(match current {
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
    /// written. An expiry deadline on the key is kept.
    ///
    /// `f` runs while the engine holds a lock covering `key` and other keys:
    /// keep it short, and do not call the engine from it (such calls return
    /// [`Error::Reentrant`]). If `f` panics, nothing is written.
    pub fn modify<R>(&self, key: &[u8], f: impl FnOnce(&mut Option<Vec<u8>>) -> R) -> Result<R> {
        not_reentrant()?;
        let max_value = self.shared().config.value_limit();
        self.shared().update(key, |current| {
            let mut value = current.as_ref().map(|c| c.value.to_vec());
            let r = {
                let _guard = ClosureGuard::enter();
                f(&mut value)
            };
            let change = match (value, current) {
                (None, None) => None,
                (None, Some(_)) => Some(Change {
                    slot: Slot::Tombstone,
                    deadline: None,
                }),
                (Some(v), Some(c)) if c.value[..] == v[..] => None,
                (Some(v), current) => {
                    if v.len() > max_value {
                        return Err(Error::TooLarge {
                            what: "value",
                            len: v.len(),
                            max: max_value,
                        });
                    }
                    Some(Change {
                        slot: Slot::Value(Bytes::from(v)),
                        deadline: current.and_then(|c| c.deadline),
                    })
                }
            };
            Ok((change, r))
        })
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
        if s.health.is_poisoned() {
            return Err(s.health.poison_error());
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
            flush_errors: Counters::get(&c.flush_errors),
            last_flush_duration: c.last_flush(),
            syncs: Counters::get(&c.syncs),
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
            Lifecycle::Running(flusher) => flusher.join(),
            Lifecycle::Stopped(_) => Ok(()),
        };
        // Closing storage releases the store's lock.
        drop(s.storage.write().take());
        let outcome = flushed.and(joined);
        *life = Lifecycle::Stopped(match &outcome {
            Ok(()) => Ok(()),
            Err(e) => Err(e.duplicate()),
        });
        outcome
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!("millpond: shutdown on drop of the last handle failed: {e}");
        }
    }
}

impl Shared {
    pub(crate) fn now(&self) -> UnixMillis {
        UnixMillis::now(&*self.config.clock)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.len() > self.config.max_key_len {
            return Err(Error::TooLarge {
                what: "key",
                len: key.len(),
                max: self.config.max_key_len,
            });
        }
        Ok(())
    }

    fn check_value(&self, len: usize) -> Result<()> {
        let max = self.config.value_limit();
        if len > max {
            return Err(Error::TooLarge {
                what: "value",
                len,
                max,
            });
        }
        Ok(())
    }

    /// Admission of a write of about `incoming` bytes: refuses it when the
    /// engine is closed or cannot persist, and waits while the buffer is full.
    fn admit(&self, incoming: usize) -> Result<()> {
        let max = self.config.max_dirty_bytes;
        loop {
            self.check_open()?;
            self.health.check_writable()?;
            let bytes = self.buffer.bytes();
            if bytes == 0 || bytes + incoming <= max {
                return Ok(());
            }
            self.flush.request_urgent();
            self.buffer
                .wait_for_room(incoming, max, Duration::from_millis(100));
        }
    }

    /// Wakes the coordinator if this write made the buffer dirty or pushed
    /// it past its high watermark.
    fn after_write(&self, first_dirty: bool) {
        if first_dirty {
            self.flush.wake();
        }
        if self.buffer.bytes() > self.config.max_dirty_bytes / 2 {
            self.flush.request_urgent();
        }
    }

    /// A blind write (no read of the current value).
    fn write(&self, key: &[u8], slot: Slot, deadline: Option<UnixMillis>) -> Result<()> {
        let len = match &slot {
            Slot::Value(v) => v.len(),
            Slot::Tombstone => 0,
        };
        self.admit(key.len() + len + ENTRY_OVERHEAD)?;
        let inserted = {
            let mut shard = self.buffer.lock(self.buffer.shard_of(key));
            self.check_open()?;
            self.buffer.insert(&mut shard, key, slot, deadline)
        };
        self.after_write(inserted.first_dirty);
        Ok(())
    }

    /// A read-modify-write of one key: `f` sees the live value and decides
    /// the change, while the key's shard lock is held.
    fn update<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<Current>) -> Result<(Option<Change>, R)>,
    ) -> Result<R> {
        self.check_key(key)?;
        self.admit(key.len() + ENTRY_OVERHEAD)?;
        let index = self.buffer.shard_of(key);
        // A storage read made without the lock, and the generation it is
        // valid for.
        let mut from_storage: Option<(u64, Option<Stored>)> = None;
        loop {
            let mut shard = self.buffer.lock(index);
            self.check_open()?;
            let current = match shard.get(key) {
                Some(e) => match &e.slot {
                    Slot::Value(v) if live(e.deadline, || self.now()) => Some(Current {
                        value: v.clone(),
                        deadline: e.deadline,
                    }),
                    _ => None,
                },
                None => match &from_storage {
                    Some((generation, stored)) if *generation == shard.generation() => stored
                        .as_ref()
                        .filter(|st| live(st.deadline, || self.now()))
                        .map(|st| Current {
                            value: st.value.clone(),
                            deadline: st.deadline,
                        }),
                    _ => {
                        let generation = shard.generation();
                        drop(shard);
                        from_storage = Some((generation, self.read_stored(key)?));
                        continue;
                    }
                },
            };
            let (change, r) = f(current)?;
            let inserted = change.map(|c| self.buffer.insert(&mut shard, key, c.slot, c.deadline));
            drop(shard);
            if let Some(ins) = inserted {
                self.after_write(ins.first_dirty);
            }
            return Ok(r);
        }
    }

    /// Reads `key` from storage (ignoring deadlines).
    fn read_stored(&self, key: &[u8]) -> Result<Option<Stored>> {
        let storage = self.storage()?;
        loop {
            let Some(raw) = storage.get_meta(key)? else {
                return Ok(None);
            };
            let rec = codec::decode_meta(key, &raw)?;
            let deadline = rec.deadline.map(UnixMillis);
            match rec.value {
                ValueRef::Inline(v) => {
                    return Ok(Some(Stored {
                        value: raw.slice_ref(v),
                        deadline,
                    }))
                }
                ValueRef::Blob(b) => match storage.get_blob(b.id)? {
                    Some(value) => {
                        b.check(key, &value)?;
                        return Ok(Some(Stored { value, deadline }));
                    }
                    None => {
                        // A flush may have replaced the record and removed
                        // its blob since it was read: read it again. If it
                        // is unchanged, the blob is really missing.
                        if storage.get_meta(key)?.as_deref() == Some(&raw[..]) {
                            return Err(Error::corrupt(
                                Some(key),
                                format!("the record points at blob {}, which is missing", b.id),
                            ));
                        }
                    }
                },
            }
        }
    }
}

const _: () = {
    const fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Engine>();
};
