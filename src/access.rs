//! How the engine writes one key: admission, the write path and
//! read-modify-write, as methods of [`Shared`]; the purge.
//!
//! - **Read**: [`Shared::read`] and [`Shared::deadline_of`] are thin wrappers
//!   of the one read path, [`Shared::lookup`] (`src/lookup.rs`).
//! - **Write** (blind): admission (closed, health, room in the buffer), then
//!   the key's shard lock, then `DirtyMap::insert`.
//! - **Read-modify-write** (`modify`, `delete`, `expire`, `persist`): the
//!   current value is found by a [`Lookup`], and the change is decided and
//!   made under the shard lock of the lookup's answering probe (storage and
//!   blob reads are made without the lock and confirmed by that probe:
//!   DESIGN.md, invariant 6).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use crate::buffer::dirty::{cost_of, Inserted, Reservation, Shard, ENTRY_OVERHEAD, SHARDS};
use crate::buffer::Slot;
use crate::clock::UnixMillis;
use crate::codec;
use crate::error::{Error, Result};
use crate::journal::format::JournalWrite;
use crate::lookup::{Found, Lookup, Step};
use crate::shared::Shared;
use crate::stats::Counters;

/// How long a writer waits for room or for a held key before it looks again
/// (it is woken as soon as either comes; this only bounds a missed wake-up).
pub(crate) const WAIT: Duration = Duration::from_millis(100);

/// What a read-modify-write decided to write.
pub(crate) struct Change {
    pub slot: Slot,
    pub deadline: Option<UnixMillis>,
}

/// `now + ttl`, saturating.
pub(crate) fn deadline_after(now: UnixMillis, ttl: Duration) -> UnixMillis {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    UnixMillis(now.0.saturating_add(ms))
}

impl Shared {
    pub(crate) fn now(&self) -> UnixMillis {
        UnixMillis::now(&*self.config.clock)
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.len() > self.config.max_key_len {
            return Err(Error::TooLarge {
                what: "key",
                len: key.len(),
                max: self.config.max_key_len,
            });
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, len: usize) -> Result<()> {
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

    /// Whether a metadata-only change (`expire`, `persist`) must load a
    /// stored blob value and write it again instead of pointing at it:
    /// with a journal. A journal record must be replayable on whatever
    /// store a crash leaves, and the blob a stored record points at may be
    /// newer than the store's durable point, so gone after a power cut
    /// (recovery removes blobs at or above the recovered `next_blob`); a
    /// pointer in the journal would then name a missing blob, or a reused
    /// id. Without a journal the pointer only ever reaches the store in
    /// the same or a later commit than its blob.
    pub(crate) fn metadata_change_needs_bytes(&self) -> bool {
        self.buffer.journal().is_some()
    }

    /// The deadline a plain write gets (`Config::default_ttl`).
    pub(crate) fn default_deadline(&self) -> Option<UnixMillis> {
        self.config
            .default_ttl
            .map(|ttl| deadline_after(self.now(), ttl))
    }

    /// Admission of a write that may add `incoming` bytes to the buffer:
    /// refuses it when the engine is closed or cannot persist, waits while
    /// the bytes do not fit under `max_dirty_bytes`, and reserves them
    /// (DESIGN.md, invariant 10). Call without any shard lock or reservation
    /// held: it may wait for a flush cycle, whose freeze takes every shard
    /// lock, and reservations held by waiters could fill the bound among
    /// themselves.
    pub(crate) fn admit(&self, incoming: usize) -> Result<Reservation<'_>> {
        loop {
            self.check_open()?;
            self.health().check_writable()?;
            if let Some(journal) = self.buffer.journal() {
                journal.check()?;
            }
            if let Some(reserved) = self.buffer.try_reserve(incoming) {
                return Ok(reserved);
            }
            self.flush.request_urgent();
            self.buffer.wait_for_room(incoming, WAIT);
        }
    }

    /// Wakes the coordinator if a write made the buffer dirty or pushed it
    /// past its high watermark.
    pub(crate) fn after_write(&self, first_dirty: bool) {
        if first_dirty {
            self.flush.wake();
        }
        if self.buffer.bytes() > self.config.max_dirty_bytes / 2 {
            self.flush.request_urgent();
        }
    }

    /// Completes a user's write once its locks are released: wakes the
    /// coordinator ([`Shared::after_write`]), then waits for what the
    /// journal's mode asks before a write may return (nothing without a
    /// journal). On an error the write is made and visible; it is only not
    /// confirmed.
    pub(crate) fn acknowledge(&self, inserted: &Inserted) -> Result<()> {
        self.after_write(inserted.first_dirty);
        match (self.buffer.journal(), inserted.ticket) {
            (Some(journal), Some(ticket)) => journal.acknowledge(ticket),
            _ => Ok(()),
        }
    }

    /// [`crate::storage::Backend::admit_write`] for a write of `key` about
    /// to go into `shard` (whose lock the caller holds: the freeze count
    /// read here cannot move before the write is in the shard).
    pub(crate) fn admit_write(
        &self,
        _shard: &Shard,
        key: &[u8],
        expected: Option<u64>,
    ) -> Result<Option<u64>> {
        self.keeper
            .admit_write(key, self.buffer.freezes(), expected)
    }

    /// A blind write (no read of the current value). It reserves its
    /// entry's whole cost, so it never needs more room under the lock.
    /// Returns the write's seq and journal ticket.
    pub(crate) fn write(
        &self,
        key: &[u8],
        slot: Slot,
        deadline: Option<UnixMillis>,
    ) -> Result<Inserted> {
        let cost = cost_of(key.len(), &slot);
        self.keeper.claim(key, true)?;
        let mut reserved = self.admit(cost)?;
        let index = self.buffer.shard_of(key);
        let inserted = loop {
            let mut shard = self.buffer.lock(index);
            self.check_open()?;
            if let Some(held) = self.buffer.held(&shard, key) {
                // A read-modify-write of this key is waiting for room: it
                // writes first. Wait without the lock or the reservation.
                drop(shard);
                drop(reserved);
                self.buffer.wait_unheld(held, WAIT);
                reserved = self.admit(cost)?;
                continue;
            }
            if self.admit_write(&shard, key, None)?.is_none() {
                drop(shard);
                self.keeper.claim(key, true)?;
                continue;
            }
            break self
                .buffer
                .insert(&mut shard, key, slot, deadline, true, &mut reserved);
        };
        drop(reserved);
        self.acknowledge(&inserted)?;
        Ok(inserted)
    }

    /// Applies one journal record found by `open` (its writes together, as
    /// a transaction's commit does), before the flusher starts and before
    /// the journal is attached, so no cycle can commit a cut while a replay
    /// is half done (a cut above the journal's seqs would make the next
    /// open skip the records not yet applied). The buffer may pass its
    /// bound meanwhile (invariant 10's exception); nothing waits for room.
    pub(crate) fn replay_record(&self, writes: Vec<JournalWrite>) {
        let incoming: usize = writes.iter().map(|w| cost_of(w.key.len(), &w.slot)).sum();
        let mut reserved = self.buffer.reserve_beyond_bound(incoming);
        let mut indexes: Vec<usize> = writes
            .iter()
            .map(|w| self.buffer.shard_of(&w.key))
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut guards: Vec<_> = indexes.iter().map(|&i| (i, self.buffer.lock(i))).collect();
        let writes = writes
            .into_iter()
            .map(|w| (w.key, w.slot, w.deadline))
            .collect();
        self.buffer.insert_all(&mut guards, writes, &mut reserved);
    }

    /// The live value of `key` (loaded, whatever its size) and its deadline.
    pub(crate) fn read(&self, key: &[u8]) -> Result<Option<(Bytes, Option<UnixMillis>)>> {
        let seen = self.lookup(key, true)?;
        let deadline = seen.found.as_ref().and_then(|f| f.deadline);
        Ok(seen.into_value().map(|v| (v, deadline)))
    }

    /// The deadline of `key`'s live value: `Ok(None)` if it has none or the
    /// key has no live value.
    pub(crate) fn deadline_of(&self, key: &[u8]) -> Result<Option<UnixMillis>> {
        Ok(self.lookup(key, false)?.found.and_then(|f| f.deadline))
    }

    /// A read-modify-write of one key: `f` sees the live value (`None` if
    /// there is none) and decides the change, while the key's shard lock is
    /// held. With `need_bytes`, the value is loaded even if it is a blob.
    ///
    /// Room: before `f` runs, the key's current cost is reserved (all any
    /// change but a growing `modify` needs). If the change needs more and it
    /// cannot be had at once, the key is held (no other write of it can
    /// happen), the lock released, and the change inserted once there is
    /// room ([`Shared::insert_held`]); `f` runs once either way.
    pub(crate) fn update<R>(
        &self,
        key: &[u8],
        need_bytes: bool,
        f: impl FnOnce(Option<Found>) -> Result<(Option<Change>, R)>,
    ) -> Result<R> {
        self.keeper.claim(key, true)?;
        let mut reserved = self.admit(key.len() + ENTRY_OVERHEAD)?;
        let index = self.buffer.shard_of(key);
        let mut lookup = Lookup::new(key, need_bytes);
        let (mut shard, seen, epoch) = loop {
            let mut shard = self.buffer.lock(index);
            self.check_open()?;
            if let Some(held) = self.buffer.held(&shard, key) {
                // Another read-modify-write of this key is waiting for room
                // to write its change: read after it.
                drop(shard);
                let want = reserved.bytes();
                drop(reserved);
                self.buffer.wait_unheld(held, WAIT);
                reserved = self.admit(want)?;
                continue;
            }
            // The read, like the write, is made under the right to write
            // the key.
            let Some(epoch) = self.admit_write(&shard, key, None)? else {
                drop(shard);
                self.keeper.claim(key, true)?;
                continue;
            };
            let seen = match lookup.probe(&mut shard, self)? {
                Step::Seen(seen) => seen,
                Step::Fetch(fetch) => {
                    drop(shard);
                    lookup.fetch(self, fetch)?;
                    continue;
                }
            };
            let keep = key.len() + ENTRY_OVERHEAD + seen.found.as_ref().map_or(0, Found::held_len);
            if !self.buffer.reserve_up_to(&mut reserved, keep) {
                drop(shard);
                drop(reserved);
                reserved = self.admit(keep)?;
                continue;
            }
            break (shard, seen, epoch);
        };
        let (change, r) = f(seen.found)?;
        let Some(change) = change else {
            return Ok(r);
        };
        let need = self.buffer.growth(&shard, key, &change.slot);
        let inserted = if self.buffer.reserve_up_to(&mut reserved, need) {
            let inserted = self.buffer.insert(
                &mut shard,
                key,
                change.slot,
                change.deadline,
                true,
                &mut reserved,
            );
            drop(shard);
            inserted
        } else {
            self.buffer.hold(&mut shard, key);
            drop(shard);
            drop(reserved);
            self.insert_held(index, key, change, need, epoch)?
        };
        self.acknowledge(&inserted)?;
        Ok(r)
    }

    /// Inserts the change of a read-modify-write that holds `key` (shard
    /// `index`), once `need` bytes (more if a flush froze the key's entry
    /// meanwhile) fit in the buffer; then releases the key. Called without
    /// any lock or reservation. The change is still right: no write of the
    /// key can be made while it is held, a flush only moves the value it
    /// was computed from, and the right to write it must still be at the
    /// `epoch` it was read under (no other engine wrote it meanwhile). On
    /// an error (closed, failing, the right lost) nothing is written.
    fn insert_held(
        &self,
        index: usize,
        key: &[u8],
        change: Change,
        mut need: usize,
        epoch: u64,
    ) -> Result<Inserted> {
        loop {
            let admitted = self.admit(need);
            let mut shard = self.buffer.lock(index);
            let right = admitted.and_then(|r| {
                self.check_open()?;
                Ok((r, self.admit_write(&shard, key, Some(epoch))?))
            });
            let mut reserved = match right {
                Ok((reserved, Some(_))) => reserved,
                Ok((reserved, None)) => {
                    // Renewed (at the same epoch, or refused) outside the
                    // lock; the key stays held meanwhile.
                    drop(shard);
                    drop(reserved);
                    if let Err(e) = self.keeper.claim(key, true) {
                        self.buffer.unhold(&mut self.buffer.lock(index), key);
                        return Err(e);
                    }
                    continue;
                }
                Err(e) => {
                    self.buffer.unhold(&mut shard, key);
                    return Err(e);
                }
            };
            need = self.buffer.growth(&shard, key, &change.slot);
            if self.buffer.reserve_up_to(&mut reserved, need) {
                let inserted = self.buffer.insert(
                    &mut shard,
                    key,
                    change.slot,
                    change.deadline,
                    true,
                    &mut reserved,
                );
                self.buffer.unhold(&mut shard, key);
                return Ok(inserted);
            }
        }
    }

    /// Indexes the deadlines other engines stored for keys of partitions
    /// this engine took from them since the last call
    /// ([`crate::storage::Backend::taken_deadlines`]): keys with no dirty
    /// entry only; the purge checks each against its stored record before
    /// it deletes anything (invariant 16). A failure is logged and the
    /// entries are not indexed (reads still see the keys expired).
    fn index_taken_deadlines(&self) {
        let entries = match self.keeper.taken_deadlines() {
            Ok(entries) => entries,
            Err(e) => {
                log::warn!("millpond: reading the deadlines of partitions taken over failed: {e}");
                return;
            }
        };
        for (key, raw) in entries {
            match codec::decode_deadline(&key, &raw) {
                Ok(d) => self.buffer.index_stored_deadline(&key, UnixMillis(d)),
                Err(e) => log::warn!("millpond: {e}; its key is not indexed for expiry"),
            }
        }
    }

    /// The purger's tombstone for `key` in `shard` (whose lock the caller
    /// holds), if the room it needs can be reserved now; else `Err` with
    /// the room needed.
    fn tombstone(
        &self,
        shard: &mut Shard,
        key: &[u8],
        reserved: &mut Reservation<'_>,
    ) -> std::result::Result<Inserted, usize> {
        let need = self.buffer.growth(shard, key, &Slot::Tombstone);
        if !self.buffer.reserve_up_to(reserved, need) {
            return Err(need);
        }
        Ok(self
            .buffer
            .insert(shard, key, Slot::Tombstone, None, false, reserved))
    }

    /// Deletes expired keys: for each shard, the keys its expiry index shows
    /// past their deadline (at most `slice` per shard, if given) get a
    /// tombstone, which the next flush persists (record, blob and deadline
    /// entry removed). The index is exact, so a key written since it
    /// expired is not touched; a key whose `modify` runs is not either (the
    /// purge waits for the shard lock), nor a key a read-modify-write holds
    /// (skipped: its write comes next). A tombstone needs room like any
    /// write: a sliced purge (the purger thread) stops at the first that
    /// does not fit now, leaving the rest for a later tick; a full purge
    /// waits for room without the shard lock. Returns the keys purged.
    pub(crate) fn purge(&self, slice: Option<usize>) -> u64 {
        let (purged, claimed) = self.purge_once(slice);
        if claimed {
            // Partitions taken just now: their expired keys go at once.
            purged + self.purge_once(slice).0
        } else {
            purged
        }
    }

    /// One pass of [`Shared::purge`]: the keys purged, and whether it took
    /// the lease of a partition it found expired keys of.
    fn purge_once(&self, slice: Option<usize>) -> (u64, bool) {
        if self.check_open().is_err() || self.health().is_poisoned() {
            return (0, false);
        }
        self.index_taken_deadlines();
        let now = self.now();
        let mut purged = 0;
        let mut first_dirty = false;
        let mut reserved = self.buffer.no_reservation();
        let mut unowned = Vec::new();
        let exclusive = self.keeper.exclusive();
        let mut unverified = Vec::new();
        'shards: for index in 0..SHARDS {
            loop {
                let mut shard = self.buffer.lock(index);
                if self.check_open().is_err() {
                    break 'shards;
                }
                let mut short = None;
                for key in shard.expiry().expired(now, slice.unwrap_or(usize::MAX)) {
                    if self.buffer.held(&shard, &key).is_some() {
                        continue;
                    }
                    let Ok(Some(epoch)) = self.admit_write(&shard, &key, None) else {
                        // Expiry runs only in the key's owner: claimed
                        // below, outside the shard lock.
                        unowned.push(key);
                        continue;
                    };
                    if !exclusive && shard.get(&key).is_none() {
                        // A stored deadline another engine may have changed
                        // since it was indexed: checked below.
                        unverified.push((index, key, shard.generation(), epoch));
                        continue;
                    }
                    match self.tombstone(&mut shard, &key, &mut reserved) {
                        Ok(ins) => first_dirty |= ins.first_dirty,
                        Err(need) => {
                            short = Some(need);
                            break;
                        }
                    }
                    purged += 1;
                }
                drop(shard);
                let Some(need) = short else {
                    break;
                };
                if slice.is_some() {
                    // The flusher drains first.
                    self.flush.request_urgent();
                    break 'shards;
                }
                drop(std::mem::replace(
                    &mut reserved,
                    self.buffer.no_reservation(),
                ));
                self.after_write(std::mem::take(&mut first_dirty));
                match self.admit(need) {
                    Ok(r) => reserved = r,
                    Err(_) => break 'shards,
                }
            }
        }
        // Stored deadlines on a store other engines write: the key is
        // purged only if its stored record still has a deadline that has
        // passed; otherwise its index entry is corrected. Skipped (left for
        // a later tick) if the key's shard released a cycle or the key was
        // written since it was seen.
        for (index, key, generation, epoch) in unverified {
            let Ok(stored) = self.read_record(&key) else {
                continue;
            };
            let mut shard = self.buffer.lock(index);
            if shard.generation() != generation
                || shard.get(&key).is_some()
                || self.buffer.held(&shard, &key).is_some()
            {
                continue;
            }
            match stored.and_then(|found| found.deadline) {
                Some(d) if d <= now => {}
                deadline => {
                    shard.index_deadline(&key, deadline);
                    continue;
                }
            }
            // Still this engine's at the epoch of the read (no other
            // engine can have written the key since).
            if !matches!(self.admit_write(&shard, &key, Some(epoch)), Ok(Some(_))) {
                continue;
            }
            match self.tombstone(&mut shard, &key, &mut reserved) {
                Ok(ins) => first_dirty |= ins.first_dirty,
                Err(_) => {
                    self.flush.request_urgent();
                    break;
                }
            }
            purged += 1;
        }
        drop(reserved);
        // Keys of partitions this engine does not own (a database shared by
        // many engines): take the lease if it is free, so that the next
        // purge deletes them; a key another engine owns leaves this
        // engine's expiry index (its owner purges it; reads see it expired
        // either way).
        let mut claimed = false;
        for key in unowned {
            match self.keeper.claim(&key, false) {
                Ok(()) => claimed = true,
                // Another engine holds it (not this one, handing it over).
                Err(Error::NotOwner { .. }) if self.keeper.cache_token(&key).is_none() => {
                    let index = self.buffer.shard_of(&key);
                    self.buffer.lock(index).forget_deadline(&key);
                }
                Err(_) => {}
            }
        }
        if purged > 0 {
            Counters::add(&self.counters.expired, purged);
            self.after_write(first_dirty);
        }
        (purged, claimed)
    }
}
