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
//! Lock order: shard locks are taken in increasing index order when more than
//! one is held; nothing else is locked while a shard lock is held, except the
//! flusher's wake-up (a non-blocking channel send).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::buffer::expiry::ExpiryIndex;
use crate::clock::UnixMillis;
use crate::codec::BlobRef;

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
        let value_len = match &self.slot {
            Slot::Value(v) => v.len(),
            Slot::Blob(_) | Slot::Tombstone => 0,
        };
        key_len + value_len + ENTRY_OVERHEAD
    }
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

    pub(crate) fn expiry(&self) -> &ExpiryIndex {
        &self.expiry
    }
}

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
    /// The highest value `bytes` has had (raised with `fetch_max` on every
    /// increase).
    peak: AtomicUsize,
    /// When the active maps went from clean to dirty: milliseconds since
    /// `epoch`, plus one; 0 when every active map is empty. Written under a
    /// shard lock (first write) or all of them (freeze).
    dirty_since: AtomicU64,
    epoch: Instant,
    /// Writers waiting for room wait here; notified on release.
    room: Mutex<()>,
    room_freed: Condvar,
}

/// What [`DirtyMap::insert`] did.
pub(crate) struct Inserted {
    /// The active maps were clean before this write.
    pub first_dirty: bool,
}

impl DirtyMap {
    pub(crate) fn new(last_seq: Seq) -> DirtyMap {
        DirtyMap {
            shards: (0..SHARDS)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
            hasher: RandomState::new(),
            last_seq: AtomicU64::new(last_seq.0),
            bytes: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            dirty_since: AtomicU64::new(0),
            epoch: Instant::now(),
            room: Mutex::new(()),
            room_freed: Condvar::new(),
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
    /// are not counted as writes.
    pub(crate) fn insert(
        &self,
        shard: &mut Shard,
        key: &[u8],
        slot: Slot,
        deadline: Option<UnixMillis>,
        user: bool,
    ) -> Inserted {
        let seq = Seq(self.last_seq.fetch_add(1, Ordering::Relaxed) + 1);
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
            let grown = new_cost - old_cost;
            let now = self.bytes.fetch_add(grown, Ordering::Relaxed) + grown;
            self.peak.fetch_max(now, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(old_cost - new_cost, Ordering::Relaxed);
        }
        let mut first_dirty = false;
        if self.dirty_since.load(Ordering::Relaxed) == 0 {
            let now = self.epoch.elapsed().as_millis() as u64 + 1;
            first_dirty = self
                .dirty_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        }
        Inserted { first_dirty }
    }

    /// Records the stored deadline of a key that is not dirty (rebuilding the
    /// index at open). Marks nothing dirty.
    pub(crate) fn index_stored_deadline(&self, key: &[u8], deadline: UnixMillis) {
        let mut g = self.lock(self.shard_of(key));
        if g.get(key).is_none() {
            g.expiry.set(key, Some(deadline));
        }
    }

    /// The newest unpersisted write of every key with `prefix` greater than
    /// `after`, in key order (shard by shard, so not one instant).
    pub(crate) fn entries_with_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> std::collections::BTreeMap<Key, Entry> {
        let mut out = std::collections::BTreeMap::new();
        let wanted = |k: &[u8]| k.starts_with(prefix) && after.is_none_or(|a| k > a);
        for s in self.shards.iter() {
            let g = s.0.lock();
            if let Some(frozen) = &g.frozen {
                for (k, e) in frozen.entries.iter().filter(|(k, _)| wanted(k)) {
                    out.insert(k.clone(), e.clone());
                }
            }
            for (k, e) in g.active.iter().filter(|(k, _)| wanted(k)) {
                out.insert(k.clone(), e.clone());
            }
        }
        out
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
        drop(guards);
        any.then_some(frozen)
    }

    /// Drops the frozen maps of a committed cycle: their writes are now read
    /// from storage.
    pub(crate) fn release(&self, frozen: &Frozen) {
        for (i, f) in frozen.shards.iter().enumerate() {
            if f.is_some() {
                let mut g = self.lock(i);
                g.frozen = None;
                g.generation += 1;
            }
        }
        self.bytes.fetch_sub(frozen.bytes, Ordering::Relaxed);
        let _room = self.room.lock();
        self.room_freed.notify_all();
    }

    /// Bytes buffered (active and frozen).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
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

    /// Waits up to `timeout` for `release` to free room for `incoming` bytes
    /// under `max`. (`release` subtracts before it takes `room`, and this
    /// checks under `room`, so a release is never missed.)
    pub(crate) fn wait_for_room(&self, incoming: usize, max: usize, timeout: Duration) {
        let mut g = self.room.lock();
        let bytes = self.bytes();
        if bytes == 0 || bytes + incoming <= max {
            return;
        }
        let _ = self.room_freed.wait_for(&mut g, timeout);
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

    fn set(map: &DirtyMap, key: &[u8], value: &[u8]) -> Seq {
        let mut g = map.lock(map.shard_of(key));
        map.insert(
            &mut g,
            key,
            Slot::Value(Bytes::copy_from_slice(value)),
            None,
            true,
        );
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
        let map = DirtyMap::new(Seq(10));
        assert_eq!(set(&map, b"k", b"1"), Seq(11));
        assert_eq!(set(&map, b"k", b"22"), Seq(12));
        assert_eq!(map.bytes(), 1 + 2 + ENTRY_OVERHEAD);
        let (entries, writes, coalesced) = map.counts();
        assert_eq!((entries, writes, coalesced), (1, 2, 1));
        assert!(map.dirty_for().is_some());
    }

    #[test]
    fn freeze_takes_one_cut_and_release_frees_it() {
        let map = DirtyMap::new(Seq(0));
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
        map.release(&frozen);
        assert!(read(&map, b"b").is_none());
        assert_eq!(map.lock(map.shard_of(b"b")).generation(), gen + 1);
        assert_eq!(map.bytes(), 1 + 1 + ENTRY_OVERHEAD);
        let next = map.freeze().unwrap();
        assert_eq!(next.cut, Seq(3));
        map.release(&next);
        assert_eq!(map.bytes(), 0);
        assert!(map.freeze().is_none());
    }
}
