//! [`DirtyMap`]: acknowledged writes that are not yet persisted.
//!
//! The map is split into [`SHARDS`] shards, each behind its own mutex. A shard
//! holds two maps, like a memtable and an immutable memtable:
//! - `active`: where writes land. One [`Entry`] per key, the newest write
//!   (repeated writes coalesce; a delete is a [`Slot::Tombstone`]).
//! - `frozen`: the `active` map of the flush cycle in progress, read-only,
//!   shared with the flusher threads. Present only while a cycle runs.
//!
//! Reads look in `active`, then `frozen`, then storage.
//!
//! Each shard also owns the [`ExpiryIndex`] of its keys, kept exact by
//! [`DirtyMap::insert`] under the same lock.
//!
//! Invariants (each guarded by the shard's mutex):
//! - Every write takes its sequence number ([`Seq`]) while holding its shard's
//!   lock, so within a key, a higher seq is a later write.
//! - [`DirtyMap::freeze`] holds *every* shard lock at once while it moves
//!   every `active` map to `frozen` and reads the cut (the last assigned seq).
//!   The frozen maps therefore hold exactly the newest write of every key
//!   among writes with seq <= cut: one point in the write history.
//! - A shard's `frozen` map is dropped only by [`DirtyMap::release`], after
//!   the cycle that persisted it committed; the shard's `generation` then
//!   moves on, so a caller that read storage before the release can tell
//!   that storage may have changed since.
//! - `bytes` is the sum of the costs of the entries in all `active` and
//!   `frozen` maps.
//!
//! The bound (`max_dirty_bytes`) is kept by reservation. `charged` is
//! `bytes` plus every outstanding [`Reservation`]; a reservation is granted
//! only if `charged` stays at or under the bound (or nothing at all is
//! charged: one write larger than the bound may enter an empty buffer), and
//! [`DirtyMap::insert`] turns reserved bytes into the entry's cost, so
//! `bytes <= charged <= max` at every instant. Nobody waits for room while
//! holding a shard lock (freeze takes them all) or a reservation (waiters
//! holding reservations could fill the bound among themselves).
//!
//! A read-modify-write whose change needs more room than it could reserve
//! marks its key **held** in the shard, releases the lock, waits for room,
//! and inserts under the lock again. While a key is held no other write of
//! it is made: writers, read-modify-writes and transaction commits that
//! would write it wait (without any lock or reservation) until it is
//! released; the purger skips it.
//!
//! With a journal (`Config::journal`), every write is appended to it as a
//! record in the same critical section that hands out its seq, and a
//! transaction's writes as one record under all of their shard locks: the
//! journal's stream order agrees with the order of every key's writes and
//! with whatever a reader saw, and [`DirtyMap::freeze`] marks the cut in it
//! under every shard lock (records before the mark have seqs at or below
//! the cut, records after it above). Only here are seqs handed out, so this
//! is the one owner of that order.
//!
//! Lock order: shard locks are taken in increasing index order when more than
//! one is held; nothing else is locked while a shard lock is held, except the
//! flusher's wake-up (a non-blocking channel send), the `room` mutex (a
//! leaf, to wake waiters) and the journal's pending-records mutex (a leaf:
//! appends copy bytes, never do I/O).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::buffer::cache::ReadCache;
use crate::buffer::expiry::ExpiryIndex;
use crate::clock::UnixMillis;
use crate::codec::BlobRef;
use crate::iter::KeyRange;
use crate::journal::{self, Ticket};
use crate::lookup::Found;

/// Number of shards. A power of two.
pub(crate) const SHARDS: usize = 64;

/// Memory counted per entry beyond its key and value bytes (map slot, entry
/// fields, allocation headers; an estimate).
pub(crate) const ENTRY_OVERHEAD: usize = 80;

/// A write's sequence number: unique, increasing over the life of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Seq(pub u64);

pub(crate) type Key = Box<[u8]>;

/// What a dirty entry says about its key.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    /// The key holds this value.
    Value(Bytes),
    /// The key holds the value already stored in the blob tree under this
    /// pointer (a metadata-only change, such as a new deadline, of a value
    /// that was not in memory).
    Blob(BlobRef),
    /// The key was deleted.
    Tombstone,
}

/// The newest unpersisted write of one key.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub slot: Slot,
    pub seq: Seq,
    /// Expiry deadline of the value, if any.
    pub deadline: Option<UnixMillis>,
    /// The stored deadline index may hold an entry for this key that this
    /// write changes: its flush must set or clear it.
    pub rewrite_deadline: bool,
}

impl Entry {
    fn cost(&self, key_len: usize) -> usize {
        cost_of(key_len, &self.slot)
    }
}

/// The bytes an entry of `slot` under a key of `key_len` bytes counts
/// against `max_dirty_bytes`.
pub(crate) fn cost_of(key_len: usize, slot: &Slot) -> usize {
    let value_len = match slot {
        Slot::Value(v) => v.len(),
        Slot::Blob(_) | Slot::Tombstone => 0,
    };
    key_len + value_len + ENTRY_OVERHEAD
}

/// The frozen part of one shard: what a flush cycle persists.
#[derive(Debug, Default)]
pub(crate) struct FrozenShard {
    pub entries: HashMap<Key, Entry>,
    /// Sum of entry costs.
    pub bytes: usize,
}

/// One shard. Guarded by its mutex in [`DirtyMap`].
#[derive(Debug, Default)]
pub(crate) struct Shard {
    active: HashMap<Key, Entry>,
    active_bytes: usize,
    frozen: Option<Arc<FrozenShard>>,
    /// Deadlines of this shard's keys (dirty or stored).
    expiry: ExpiryIndex,
    /// Moves on each time a frozen map of this shard is released, that is,
    /// each time storage may have changed for keys of this shard.
    generation: u64,
    /// Writes accepted by this shard.
    writes: u64,
    /// Writes that replaced an unpersisted write (persisted only once).
    coalesced: u64,
    /// Keys held by a read-modify-write waiting for room: no other write of
    /// them is made until they are released.
    held: HashSet<Key>,
    /// Clean values read from storage (see `cache.rs`).
    cache: ReadCache,
}

impl Shard {
    /// The newest unpersisted write of `key`, if any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.active
            .get(key)
            .or_else(|| self.frozen.as_ref().and_then(|f| f.entries.get(key)))
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Drops `key` from the expiry index, leaving its entry as it is: the
    /// key belongs to another engine's partition (a database shared by many
    /// engines), whose owner purges it.
    pub(crate) fn forget_deadline(&mut self, key: &[u8]) {
        self.expiry.set(key, None);
    }

    /// Sets the indexed deadline of `key`, which has no dirty entry, to
    /// what its stored record says (`None`: no deadline, or no record).
    pub(crate) fn index_deadline(&mut self, key: &[u8], deadline: Option<UnixMillis>) {
        if self.get(key).is_none() {
            self.expiry.set(key, deadline);
        }
    }

    pub(crate) fn expiry(&self) -> &ExpiryIndex {
        &self.expiry
    }

    /// What storage holds for `key`, if the read cache has it under
    /// `token` (`Backend::cache_token`).
    pub(crate) fn cached(&self, key: &[u8], token: u64) -> Option<&Option<Found>> {
        self.cache.get(key, token)
    }

    /// Caches what storage holds for `key`: only for a read confirmed under
    /// this shard's lock with no dirty entry and an unchanged generation,
    /// made while the cache token was `token` throughout.
    pub(crate) fn cache_clean(&mut self, key: &[u8], found: Option<Found>, token: u64) {
        self.cache.put(key, found, token);
    }

    fn is_held(&self, key: &[u8]) -> bool {
        !self.held.is_empty() && self.held.contains(key)
    }
}

/// Bytes of the bound set aside for a write not yet inserted. Returned to
/// the bound when dropped, except what [`DirtyMap::insert`] turned into an
/// entry's cost.
#[must_use]
pub(crate) struct Reservation<'a> {
    map: &'a DirtyMap,
    bytes: usize,
}

impl Reservation<'_> {
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.map.uncharge(self.bytes);
        }
    }
}

/// A key found held, with what is needed to wait for its release
/// ([`DirtyMap::wait_unheld`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeldKey(u64);

/// A flush cycle's view of the dirty map: the frozen shards and the cut.
#[derive(Debug)]
pub(crate) struct Frozen {
    /// The frozen map of each shard (by shard index); `None` where empty.
    pub shards: Vec<Option<Arc<FrozenShard>>>,
    /// Every write with seq <= cut is in these maps or already persisted;
    /// none with a higher seq is.
    pub cut: Seq,
    pub entries: usize,
    pub bytes: usize,
}

#[repr(align(128))]
struct Padded<T>(T);

/// The dirty map. See the module documentation for its invariants.
pub(crate) struct DirtyMap {
    shards: Box<[Padded<Mutex<Shard>>]>,
    hasher: RandomState,
    /// The last sequence number handed out.
    last_seq: AtomicU64,
    /// Sum of entry costs in all active and frozen maps.
    bytes: AtomicUsize,
    /// `bytes` plus every outstanding reservation; at most `max` (but see
    /// [`DirtyMap::try_reserve`]).
    charged: AtomicUsize,
    /// The bound: `Config::max_dirty_bytes`.
    max: usize,
    /// The highest value `bytes` has had (raised with `fetch_max` on every
    /// increase).
    peak: AtomicUsize,
    /// When the active maps went from clean to dirty: milliseconds since
    /// `epoch`, plus one; 0 when every active map is empty. Written under a
    /// shard lock (first write) or all of them (freeze).
    dirty_since: AtomicU64,
    epoch: Instant,
    /// Writers waiting for room, or for a held key, wait here; notified on
    /// release, and when a reservation or a held key is given back while
    /// someone waits.
    room: Mutex<()>,
    room_freed: Condvar,
    /// Threads waiting on `room_freed`.
    waiters: AtomicUsize,
    /// Held keys released so far (a waiter for a held key waits until it
    /// moves).
    unholds: AtomicU64,
    /// Freezes so far; raised by [`DirtyMap::freeze`] under every shard
    /// lock. A reader that took a snapshot of dirty entries (under every
    /// shard lock, [`DirtyMap::nearest`]) and then read storage knows that
    /// storage holds no commit newer than its snapshot's frozen maps if
    /// this has not moved (a commit follows its freeze).
    freezes: AtomicU64,
    /// The journal, once attached (never with `Journal::Off`).
    journal: OnceLock<Arc<journal::Writer>>,
}

/// What [`DirtyMap::insert`] did.
pub(crate) struct Inserted {
    /// The active maps were clean before this write.
    pub first_dirty: bool,
    /// The write's seq.
    pub seq: Seq,
    /// Where the write's journal record ends (`None` without a journal).
    pub ticket: Option<Ticket>,
}

impl DirtyMap {
    /// An empty map; `max` is the bound on dirty bytes (`max_dirty_bytes`),
    /// `cache` the bound of the read cache (`read_cache_bytes`).
    pub(crate) fn new(last_seq: Seq, max: usize, cache: usize) -> DirtyMap {
        DirtyMap {
            shards: (0..SHARDS)
                .map(|_| {
                    Padded(Mutex::new(Shard {
                        cache: ReadCache::new(cache / SHARDS),
                        ..Shard::default()
                    }))
                })
                .collect(),
            hasher: RandomState::new(),
            last_seq: AtomicU64::new(last_seq.0),
            bytes: AtomicUsize::new(0),
            charged: AtomicUsize::new(0),
            max,
            peak: AtomicUsize::new(0),
            dirty_since: AtomicU64::new(0),
            epoch: Instant::now(),
            room: Mutex::new(()),
            room_freed: Condvar::new(),
            waiters: AtomicUsize::new(0),
            unholds: AtomicU64::new(0),
            freezes: AtomicU64::new(0),
            journal: OnceLock::new(),
        }
    }

    pub(crate) fn shard_of(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) as usize) & (SHARDS - 1)
    }

    pub(crate) fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.shards[shard].0.lock()
    }

    /// Records a write of `key` in its (locked) shard and keeps the shard's
    /// expiry index exact. `user` is false for the purger's deletes, which
    /// are not counted as writes. What the write adds to `bytes`
    /// ([`DirtyMap::growth`]) is taken from `reserved`, which must hold it;
    /// what it frees is given back to the bound.
    pub(crate) fn insert(
        &self,
        shard: &mut Shard,
        key: &[u8],
        slot: Slot,
        deadline: Option<UnixMillis>,
        user: bool,
        reserved: &mut Reservation<'_>,
    ) -> Inserted {
        let seq = self.next_seq();
        let ticket = self
            .journal
            .get()
            .map(|j| j.append(std::iter::once((seq, key, &slot, deadline))));
        let first_dirty = self.insert_entry(shard, key, slot, deadline, seq, user, reserved);
        Inserted {
            first_dirty,
            seq,
            ticket,
        }
    }

    /// Records every write of a transaction, each in its (locked) shard in
    /// `guards` (sorted by shard index), as [`DirtyMap::insert`] does; with
    /// a journal, as one record. Returns the last write's seq.
    pub(crate) fn insert_all(
        &self,
        guards: &mut [(usize, MutexGuard<'_, Shard>)],
        writes: Vec<(Key, Slot, Option<UnixMillis>)>,
        reserved: &mut Reservation<'_>,
    ) -> Inserted {
        let seqs: Vec<Seq> = writes.iter().map(|_| self.next_seq()).collect();
        let ticket = self.journal.get().map(|j| {
            j.append(
                writes
                    .iter()
                    .zip(&seqs)
                    .map(|((k, slot, d), seq)| (*seq, &**k, slot, *d)),
            )
        });
        let mut first_dirty = false;
        let last = seqs.last().copied().unwrap_or_default();
        for ((key, slot, deadline), seq) in writes.into_iter().zip(seqs) {
            let i = self.shard_of(&key);
            let pos = guards.partition_point(|(j, _)| *j < i);
            let Some((_, shard)) = guards.get_mut(pos).filter(|(j, _)| *j == i) else {
                debug_assert!(false, "a transaction's write without its shard lock");
                continue;
            };
            first_dirty |= self.insert_entry(shard, &key, slot, deadline, seq, true, reserved);
        }
        Inserted {
            first_dirty,
            seq: last,
            ticket,
        }
    }

    fn next_seq(&self) -> Seq {
        Seq(self.last_seq.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// The entry of a write with `seq`; returns whether the active maps were
    /// clean before it.
    #[allow(clippy::too_many_arguments)]
    fn insert_entry(
        &self,
        shard: &mut Shard,
        key: &[u8],
        slot: Slot,
        deadline: Option<UnixMillis>,
        seq: Seq,
        user: bool,
        reserved: &mut Reservation<'_>,
    ) -> bool {
        debug_assert!(
            self.growth(shard, key, &slot) <= reserved.bytes,
            "a write would grow the buffer past its reservation"
        );
        // Storage will change for this key: a cached clean value is stale
        // from now on (the dirty entry answers until then).
        shard.cache.invalidate(key);
        let had_deadline = shard.expiry.set(key, deadline);
        let mut entry = Entry {
            slot,
            seq,
            deadline,
            rewrite_deadline: deadline.is_some() || had_deadline,
        };
        let new_cost = entry.cost(key.len());
        shard.writes += u64::from(user);
        let old_cost = match shard.active.get_mut(key) {
            Some(old) => {
                shard.coalesced += u64::from(user);
                let old_cost = old.cost(key.len());
                // A deadline entry the replaced write was to rewrite still
                // needs rewriting.
                entry.rewrite_deadline |= old.rewrite_deadline;
                *old = entry;
                old_cost
            }
            None => {
                shard.active.insert(Box::from(key), entry);
                0
            }
        };
        shard.active_bytes = shard.active_bytes + new_cost - old_cost;
        if new_cost >= old_cost {
            // The reserved bytes become the entry's: `charged` already
            // counts them, so `bytes` stays at or under it.
            let grown = new_cost - old_cost;
            let taken = grown.min(reserved.bytes);
            if grown > taken {
                // Not reserved (a bug, caught by the assertion above in
                // debug builds): counted anyway, so the accounting stays
                // exact.
                self.charged.fetch_add(grown - taken, Ordering::SeqCst);
            }
            reserved.bytes -= taken;
            let now = self.bytes.fetch_add(grown, Ordering::SeqCst) + grown;
            self.peak.fetch_max(now, Ordering::Relaxed);
        } else {
            let freed = old_cost - new_cost;
            self.bytes.fetch_sub(freed, Ordering::SeqCst);
            self.uncharge(freed);
        }
        let mut first_dirty = false;
        if self.dirty_since.load(Ordering::Relaxed) == 0 {
            let now = self.epoch.elapsed().as_millis() as u64 + 1;
            first_dirty = self
                .dirty_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        }
        first_dirty
    }

    /// The bytes a write of `slot` to `key` would add to `bytes` now: its
    /// entry's cost, less the cost of the active entry it would replace (an
    /// entry only in the frozen map stays counted until release).
    pub(crate) fn growth(&self, shard: &Shard, key: &[u8], slot: &Slot) -> usize {
        let old = shard.active.get(key).map_or(0, |e| e.cost(key.len()));
        cost_of(key.len(), slot).saturating_sub(old)
    }

    /// A reservation of nothing, to be grown.
    pub(crate) fn no_reservation(&self) -> Reservation<'_> {
        Reservation {
            map: self,
            bytes: 0,
        }
    }

    /// Reserves `n` bytes if they fit under the bound now. Also granted when
    /// nothing at all is charged (buffer empty, no reservation out), however
    /// large: a write larger than the bound then enters alone.
    pub(crate) fn try_reserve(&self, n: usize) -> Option<Reservation<'_>> {
        // Not `then_some`: a reservation built eagerly would be dropped, and
        // so given back, when the charge fails.
        self.try_charge(n).then(|| Reservation {
            map: self,
            bytes: n,
        })
    }

    /// A reservation of `n` bytes whether or not they fit under the bound:
    /// only for the journal's replay at open, before the flusher starts
    /// (no cycle may run while a replay is half done; see DESIGN.md,
    /// invariant 10's exception).
    pub(crate) fn reserve_beyond_bound(&self, n: usize) -> Reservation<'_> {
        self.charged.fetch_add(n, Ordering::SeqCst);
        Reservation {
            map: self,
            bytes: n,
        }
    }

    /// Grows `reserved` to at least `n` bytes if the difference fits under
    /// the bound now. Returns whether `reserved` holds `n`.
    pub(crate) fn reserve_up_to(&self, reserved: &mut Reservation<'_>, n: usize) -> bool {
        let extra = n.saturating_sub(reserved.bytes);
        if extra == 0 {
            return true;
        }
        if !self.try_charge(extra) {
            return false;
        }
        reserved.bytes += extra;
        true
    }

    fn try_charge(&self, n: usize) -> bool {
        self.charged
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                (c == 0 || c.checked_add(n).is_some_and(|t| t <= self.max)).then(|| c + n)
            })
            .is_ok()
    }

    /// Gives `n` charged bytes back to the bound and wakes waiters, if any.
    fn uncharge(&self, n: usize) {
        self.charged.fetch_sub(n, Ordering::SeqCst);
        self.wake_if_waiting();
    }

    fn wake_if_waiting(&self) {
        // `waiters` is raised under `room` before a waiter checks its
        // condition; both sides are SeqCst, so either the waiter sees the
        // change or this sees the waiter and notifies after it waits.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _room = self.room.lock();
            self.room_freed.notify_all();
        }
    }

    /// `Some` if a read-modify-write holds `key` (its shard is locked by the
    /// caller), to wait for with [`DirtyMap::wait_unheld`] after unlocking.
    pub(crate) fn held(&self, shard: &Shard, key: &[u8]) -> Option<HeldKey> {
        shard
            .is_held(key)
            .then(|| HeldKey(self.unholds.load(Ordering::SeqCst)))
    }

    /// Marks `key` held by the caller, a read-modify-write that will insert
    /// it later (under the shard lock again) and then call
    /// [`DirtyMap::unhold`].
    pub(crate) fn hold(&self, shard: &mut Shard, key: &[u8]) {
        shard.held.insert(Box::from(key));
    }

    /// Releases a key marked by [`DirtyMap::hold`] and wakes its waiters.
    pub(crate) fn unhold(&self, shard: &mut Shard, key: &[u8]) {
        if shard.held.remove(key) {
            self.unholds.fetch_add(1, Ordering::SeqCst);
            self.wake_if_waiting();
        }
    }

    /// Waits up to `timeout` for a held key to be released (any held key:
    /// the caller looks again). Call without any shard lock or reservation.
    pub(crate) fn wait_unheld(&self, held: HeldKey, timeout: Duration) {
        let mut g = self.room.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        if self.unholds.load(Ordering::SeqCst) == held.0 {
            let _ = self.room_freed.wait_for(&mut g, timeout);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Records the stored deadline of a key that is not dirty (rebuilding the
    /// index at open). Marks nothing dirty.
    pub(crate) fn index_stored_deadline(&self, key: &[u8], deadline: UnixMillis) {
        let mut g = self.lock(self.shard_of(key));
        if g.get(key).is_none() {
            g.expiry.set(key, Some(deadline));
        }
    }

    /// The newest unpersisted write of the (at most) `limit` keys in
    /// `range` nearest to its start (`rev`: to its end), in key order, all
    /// taken at one instant: every shard lock is held at once while they
    /// are collected (as by a freeze), so a transaction's writes are all
    /// there or none. Also returns the freeze count at that instant
    /// ([`DirtyMap::freezes`]). A pass over every dirty entry: writers wait
    /// for it.
    pub(crate) fn nearest(
        &self,
        range: &KeyRange,
        rev: bool,
        limit: usize,
    ) -> (u64, std::collections::BTreeMap<Key, Entry>) {
        let guards: Vec<MutexGuard<'_, Shard>> = self.shards.iter().map(|s| s.0.lock()).collect();
        let freezes = self.freezes.load(Ordering::SeqCst);
        let mut out: std::collections::BTreeMap<Key, Entry> = std::collections::BTreeMap::new();
        let limit = limit.max(1);
        for g in &guards {
            let frozen = g.frozen.as_ref().map(|f| &f.entries);
            let active = g.active.iter();
            let only_frozen = frozen
                .into_iter()
                .flatten()
                .filter(|(k, _)| !g.active.contains_key(*k));
            for (k, e) in active.chain(only_frozen) {
                if !range.contains(k) {
                    continue;
                }
                if out.len() >= limit {
                    // Keep the `limit` nearest: skip a key farther than the
                    // farthest kept, else evict the farthest.
                    let farthest = if rev {
                        out.first_key_value()
                    } else {
                        out.last_key_value()
                    };
                    let farther = farthest.is_some_and(|(f, _)| if rev { k < f } else { k > f });
                    if farther {
                        continue;
                    }
                    if rev {
                        out.pop_first();
                    } else {
                        out.pop_last();
                    }
                }
                out.insert(k.clone(), e.clone());
            }
        }
        drop(guards);
        (freezes, out)
    }

    /// Freezes so far (see the field).
    pub(crate) fn freezes(&self) -> u64 {
        self.freezes.load(Ordering::SeqCst)
    }

    /// Keys with a deadline, summed over the shards.
    pub(crate) fn deadlines(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().expiry.len()).sum()
    }

    /// Moves every shard's active map to frozen, at one cut. Returns `None`
    /// if a frozen map is still present (the previous cycle has not been
    /// released) or nothing is dirty.
    pub(crate) fn freeze(&self) -> Option<Frozen> {
        let mut guards: Vec<MutexGuard<'_, Shard>> =
            self.shards.iter().map(|s| s.0.lock()).collect();
        if guards.iter().any(|g| g.frozen.is_some()) {
            return None;
        }
        let cut = Seq(self.last_seq.load(Ordering::Relaxed));
        self.dirty_since.store(0, Ordering::Relaxed);
        self.freezes.fetch_add(1, Ordering::SeqCst);
        let mut frozen = Frozen {
            shards: Vec::with_capacity(SHARDS),
            cut,
            entries: 0,
            bytes: 0,
        };
        let mut any = false;
        for g in guards.iter_mut() {
            if g.active.is_empty() {
                frozen.shards.push(None);
                continue;
            }
            any = true;
            let shard = Arc::new(FrozenShard {
                entries: std::mem::take(&mut g.active),
                bytes: std::mem::take(&mut g.active_bytes),
            });
            frozen.entries += shard.entries.len();
            frozen.bytes += shard.bytes;
            g.frozen = Some(Arc::clone(&shard));
            frozen.shards.push(Some(shard));
        }
        // Only a freeze that makes a cycle seals (its cycle then rotates).
        if let (true, Some(j)) = (any, self.journal.get()) {
            j.seal(cut);
        }
        drop(guards);
        any.then_some(frozen)
    }

    /// Drops the frozen maps of a committed (and flushed) cycle: their
    /// writes are now read from storage. Each released value whose key has
    /// no newer dirty entry goes into the read cache, under the cache token
    /// `token(key)` gives now, if that is `Some(committed)`: the token
    /// before the commit, so that no other engine can have changed the key
    /// since (see `Backend::cache_token`). The value is what the commit
    /// stored; a key written again since has had its cached value dropped
    /// by that write and gets none here.
    pub(crate) fn release(
        &self,
        frozen: &Frozen,
        committed: u64,
        token: impl Fn(&[u8]) -> Option<u64>,
    ) {
        for (i, f) in frozen.shards.iter().enumerate() {
            if let Some(f) = f {
                let mut g = self.lock(i);
                g.frozen = None;
                g.generation += 1;
                if g.cache.is_on() {
                    for (key, entry) in &f.entries {
                        if !g.active.contains_key(key) && token(key) == Some(committed) {
                            g.cache.put(key, Found::from_entry(entry), committed);
                        }
                    }
                }
            }
        }
        self.bytes.fetch_sub(frozen.bytes, Ordering::SeqCst);
        self.charged.fetch_sub(frozen.bytes, Ordering::SeqCst);
        let _room = self.room.lock();
        self.room_freed.notify_all();
    }

    /// Attaches the journal that `start` makes, with the last seq handed
    /// out as its base: every later write is appended to it. Called by
    /// `open` before any write is accepted (replayed writes are not
    /// journaled again). Every shard lock is held meanwhile, so no seq is
    /// handed out between the base and the attachment: the first segment
    /// holds every seq above its base (the completeness `replay` checks).
    pub(crate) fn attach_journal(
        &self,
        start: impl FnOnce(Seq) -> crate::error::Result<Arc<journal::Writer>>,
    ) -> crate::error::Result<()> {
        let _guards: Vec<MutexGuard<'_, Shard>> = self.shards.iter().map(|s| s.0.lock()).collect();
        let base = Seq(self.last_seq.load(Ordering::Relaxed));
        let writer = start(base)?;
        if self.journal.set(writer).is_err() {
            debug_assert!(false, "a journal attached twice");
        }
        Ok(())
    }

    /// The journal, if one is attached.
    pub(crate) fn journal(&self) -> Option<&Arc<journal::Writer>> {
        self.journal.get()
    }

    /// Bytes buffered (active and frozen).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }

    /// The highest `bytes` since the map was made.
    pub(crate) fn peak_bytes(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// How long the oldest unfrozen write has been waiting, if any.
    pub(crate) fn dirty_for(&self) -> Option<Duration> {
        match self.dirty_since.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let now = self.epoch.elapsed().as_millis() as u64 + 1;
                Some(Duration::from_millis(now.saturating_sub(since)))
            }
        }
    }

    /// Waits up to `timeout` for room for `incoming` bytes under the bound
    /// (a release, or reserved bytes given back). Call without any shard lock
    /// or reservation. (Room is freed before `room` is taken to notify, and
    /// this checks under `room`, so a release is never missed.)
    pub(crate) fn wait_for_room(&self, incoming: usize, timeout: Duration) {
        let mut g = self.room.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let charged = self.charged.load(Ordering::SeqCst);
        if charged != 0 && charged.saturating_add(incoming) > self.max {
            let _ = self.room_freed.wait_for(&mut g, timeout);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes every writer waiting for room (on shutdown or failure, so that
    /// they see it).
    pub(crate) fn wake_waiters(&self) {
        let _room = self.room.lock();
        self.room_freed.notify_all();
    }

    pub(crate) fn last_seq(&self) -> Seq {
        Seq(self.last_seq.load(Ordering::Relaxed))
    }

    /// Entries (active and frozen), writes accepted and writes coalesced,
    /// summed over the shards.
    pub(crate) fn counts(&self) -> (usize, u64, u64) {
        let mut totals = (0, 0, 0);
        for s in self.shards.iter() {
            add_counts(&mut totals, &s.0.lock());
        }
        totals
    }

    /// [`DirtyMap::counts`] without waiting: shards locked by someone else
    /// (possibly the calling thread) are skipped.
    pub(crate) fn counts_nonblocking(&self) -> (usize, u64, u64) {
        let mut totals = (0, 0, 0);
        for s in self.shards.iter() {
            if let Some(g) = s.0.try_lock() {
                add_counts(&mut totals, &g);
            }
        }
        totals
    }
}

fn add_counts(totals: &mut (usize, u64, u64), g: &Shard) {
    totals.0 += g.active.len() + g.frozen.as_ref().map_or(0, |f| f.entries.len());
    totals.1 += g.writes;
    totals.2 += g.coalesced;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn set(map: &DirtyMap, key: &[u8], value: &[u8]) -> Seq {
        let slot = Slot::Value(Bytes::copy_from_slice(value));
        let mut reserved = map.try_reserve(cost_of(key.len(), &slot)).unwrap();
        let mut g = map.lock(map.shard_of(key));
        map.insert(&mut g, key, slot, None, true, &mut reserved);
        map.last_seq()
    }

    fn read(map: &DirtyMap, key: &[u8]) -> Option<Vec<u8>> {
        let g = map.lock(map.shard_of(key));
        g.get(key).map(|e| match &e.slot {
            Slot::Value(v) => v.to_vec(),
            Slot::Blob(_) => b"<blob>".to_vec(),
            Slot::Tombstone => b"<deleted>".to_vec(),
        })
    }

    #[test]
    fn writes_coalesce_and_account_bytes() {
        let map = DirtyMap::new(Seq(10), MAX, 0);
        assert_eq!(set(&map, b"k", b"1"), Seq(11));
        assert_eq!(set(&map, b"k", b"22"), Seq(12));
        assert_eq!(map.bytes(), 1 + 2 + ENTRY_OVERHEAD);
        let (entries, writes, coalesced) = map.counts();
        assert_eq!((entries, writes, coalesced), (1, 2, 1));
        assert!(map.dirty_for().is_some());
    }

    /// A released value goes into the read cache under the token it was
    /// committed under, unless its key was written again meanwhile or the
    /// token moved.
    #[test]
    fn release_caches_what_the_commit_stored_and_nothing_stale() {
        let map = DirtyMap::new(Seq(0), MAX, 1 << 20);
        set(&map, b"a", b"1");
        set(&map, b"b", b"1");
        set(&map, b"c", b"1");
        let frozen = map.freeze().unwrap();
        set(&map, b"b", b"2");
        // The token of "c" moved since the commit (7).
        map.release(&frozen, 7, |key| Some(if key == b"c" { 8 } else { 7 }));
        let cached = |key: &[u8], t| {
            let g = map.lock(map.shard_of(key));
            g.cached(key, t)
                .map(|f| f.as_ref().map(|f| f.held_len()).unwrap_or_default())
        };
        assert_eq!(cached(b"a", 7), Some(1), "released, committed under 7");
        assert_eq!(cached(b"b", 7), None, "written again after the freeze");
        assert_eq!(cached(b"c", 7), None);
        assert_eq!(cached(b"c", 8), None, "the token moved: not cached");
        assert_eq!(read(&map, b"b").unwrap(), b"2");
    }

    #[test]
    fn freeze_takes_one_cut_and_release_frees_it() {
        let map = DirtyMap::new(Seq(0), MAX, 0);
        set(&map, b"a", b"1");
        set(&map, b"b", b"2");
        let frozen = map.freeze().unwrap();
        assert_eq!(frozen.cut, Seq(2));
        assert_eq!(frozen.entries, 2);
        assert!(map.dirty_for().is_none());
        // A second freeze waits for the first to be released.
        set(&map, b"a", b"3");
        assert!(map.freeze().is_none());
        // Reads see the newest write: active first, then frozen.
        assert_eq!(read(&map, b"a").unwrap(), b"3");
        assert_eq!(read(&map, b"b").unwrap(), b"2");
        let gen = map.lock(map.shard_of(b"b")).generation();
        map.release(&frozen, 0, |_| None);
        assert!(read(&map, b"b").is_none());
        assert_eq!(map.lock(map.shard_of(b"b")).generation(), gen + 1);
        assert_eq!(map.bytes(), 1 + 1 + ENTRY_OVERHEAD);
        let next = map.freeze().unwrap();
        assert_eq!(next.cut, Seq(3));
        map.release(&next, 0, |_| None);
        assert_eq!(map.bytes(), 0);
        assert!(map.freeze().is_none());
    }

    #[test]
    fn reservations_keep_the_bound_and_inserts_return_what_they_do_not_use() {
        let max = 1000;
        let map = DirtyMap::new(Seq(0), max, 0);
        let big = vec![7u8; 2000];
        // An empty buffer takes one write larger than the bound, alone.
        let r = map.try_reserve(2000 + ENTRY_OVERHEAD + 1).unwrap();
        assert!(map.try_reserve(1).is_none());
        drop(r);
        // Reservations count against the bound before anything is inserted.
        let mut a = map.try_reserve(600).unwrap();
        assert!(map.try_reserve(401).is_none());
        let b = map.try_reserve(400).unwrap();
        assert!(!map.reserve_up_to(&mut a, 601));
        drop(b);
        assert!(map.reserve_up_to(&mut a, 700));
        assert_eq!(a.bytes(), 700);
        // An insert takes its growth from the reservation; the rest is given
        // back when the reservation is dropped.
        let slot = Slot::Value(Bytes::from(vec![1u8; 100]));
        let cost = cost_of(1, &slot);
        {
            let mut g = map.lock(map.shard_of(b"k"));
            assert_eq!(map.growth(&g, b"k", &slot), cost);
            map.insert(&mut g, b"k", slot, None, true, &mut a);
        }
        assert_eq!(a.bytes(), 700 - cost);
        assert_eq!(map.bytes(), cost);
        drop(a);
        assert_eq!(map.charged.load(Ordering::SeqCst), cost);
        // A smaller value of the same key frees the difference at once.
        let small = Slot::Value(Bytes::from_static(b"x"));
        let mut none = map.no_reservation();
        {
            let mut g = map.lock(map.shard_of(b"k"));
            assert_eq!(map.growth(&g, b"k", &small), 0);
            map.insert(&mut g, b"k", small, None, true, &mut none);
        }
        assert_eq!(map.bytes(), 1 + 1 + ENTRY_OVERHEAD);
        assert_eq!(map.charged.load(Ordering::SeqCst), map.bytes());
        assert_eq!(map.peak_bytes(), cost);
        // Frozen bytes stay charged until release.
        let frozen = map.freeze().unwrap();
        let slot = Slot::Value(Bytes::from(big));
        let g = map.lock(map.shard_of(b"k"));
        assert_eq!(map.growth(&g, b"k", &slot), cost_of(1, &slot));
        drop(g);
        map.release(&frozen, 0, |_| None);
        assert_eq!((map.bytes(), map.charged.load(Ordering::SeqCst)), (0, 0));
    }

    #[test]
    fn a_held_key_is_reported_until_released() {
        let map = DirtyMap::new(Seq(0), MAX, 0);
        let i = map.shard_of(b"k");
        let mut g = map.lock(i);
        assert!(map.held(&g, b"k").is_none());
        map.hold(&mut g, b"k");
        let held = map.held(&g, b"k").unwrap();
        assert!(map.held(&g, b"other").is_none());
        drop(g);
        let waiter = std::thread::scope(|scope| {
            let w = scope.spawn(|| {
                let started = Instant::now();
                map.wait_unheld(held, Duration::from_secs(60));
                started.elapsed()
            });
            let mut g = map.lock(i);
            map.unhold(&mut g, b"k");
            assert!(map.held(&g, b"k").is_none());
            drop(g);
            w.join().unwrap()
        });
        assert!(waiter < Duration::from_secs(60));
    }
}
