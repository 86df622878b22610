//! How the engine reads and writes one key: the read path, the write path and
//! read-modify-write, as methods of [`Shared`].
//!
//! - **Read**: the key's shard (active, then frozen), then storage. A value
//!   whose deadline has passed is absent, wherever it is.
//! - **Write** (blind): admission (closed, health, room in the buffer), then
//!   the key's shard lock, then `DirtyMap::insert`.
//! - **Read-modify-write** (`modify`, `delete`, `expire`, `persist`): the
//!   current value is found as in the read path, and the change is decided
//!   and made under the shard lock that showed it. A storage read is made
//!   without the lock and trusted only if the shard's generation has not
//!   moved meanwhile (DESIGN.md, invariant 6); a blob the change needs is
//!   also loaded without the lock (blob contents never change under an id).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use crate::buffer::dirty::{ENTRY_OVERHEAD, SHARDS};
use crate::buffer::{Seq, Slot};
use crate::clock::UnixMillis;
use crate::codec::{self, BlobRef, ValueRef};
use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::stats::Counters;

/// Where a live value is.
#[derive(Debug, Clone)]
pub(crate) enum Held {
    /// In memory (dirty, or read from storage).
    Bytes(Bytes),
    /// In the blob tree, not loaded.
    Blob(BlobRef),
}

impl Held {
    fn into_slot(self) -> Slot {
        match self {
            Held::Bytes(b) => Slot::Value(b),
            Held::Blob(b) => Slot::Blob(b),
        }
    }
}

/// A live value and its deadline, as a read-modify-write sees it.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub held: Held,
    pub deadline: Option<UnixMillis>,
    /// Seq of the write that produced this value (its version).
    pub seq: Seq,
}

impl Found {
    /// The same value, unchanged, as a slot to write back with a new deadline.
    pub(crate) fn slot(self) -> Slot {
        self.held.into_slot()
    }

    /// The value's bytes; only valid when the read-modify-write asked for
    /// them (`need_bytes`).
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.held {
            Held::Bytes(b) => b,
            Held::Blob(_) => &[],
        }
    }
}

/// What a read-modify-write decided to write.
pub(crate) struct Change {
    pub slot: Slot,
    pub deadline: Option<UnixMillis>,
}

pub(crate) fn live(deadline: Option<UnixMillis>, now: impl FnOnce() -> UnixMillis) -> bool {
    deadline.is_none_or(|d| d > now())
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

    /// The deadline a plain write gets (`Config::default_ttl`).
    pub(crate) fn default_deadline(&self) -> Option<UnixMillis> {
        self.config
            .default_ttl
            .map(|ttl| deadline_after(self.now(), ttl))
    }

    /// Admission of a write of about `incoming` bytes: refuses it when the
    /// engine is closed or cannot persist, and waits while the buffer is full.
    pub(crate) fn admit(&self, incoming: usize) -> Result<()> {
        let max = self.config.max_dirty_bytes;
        loop {
            self.check_open()?;
            self.health().check_writable()?;
            let bytes = self.buffer.bytes();
            if bytes == 0 || bytes + incoming <= max {
                return Ok(());
            }
            self.flush.request_urgent();
            self.buffer
                .wait_for_room(incoming, max, Duration::from_millis(100));
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

    /// A blind write (no read of the current value).
    pub(crate) fn write(&self, key: &[u8], slot: Slot, deadline: Option<UnixMillis>) -> Result<()> {
        let len = match &slot {
            Slot::Value(v) => v.len(),
            Slot::Blob(_) | Slot::Tombstone => 0,
        };
        self.admit(key.len() + len + ENTRY_OVERHEAD)?;
        let inserted = {
            let mut shard = self.buffer.lock(self.buffer.shard_of(key));
            self.check_open()?;
            self.buffer.insert(&mut shard, key, slot, deadline, true)
        };
        self.after_write(inserted.first_dirty);
        Ok(())
    }

    /// The live value of `key` (loaded, whatever its size) and its deadline.
    pub(crate) fn read(&self, key: &[u8]) -> Result<Option<(Bytes, Option<UnixMillis>)>> {
        let mut missing: Option<Seq> = None;
        loop {
            let found = {
                let shard = self.buffer.lock(self.buffer.shard_of(key));
                shard.get(key).map(|e| (e.slot.clone(), e.deadline, e.seq))
            };
            let (slot, deadline, seq) = match found {
                None => {
                    return Ok(self.read_stored(key, true)?.and_then(|f| match f.held {
                        Held::Bytes(b) if live(f.deadline, || self.now()) => Some((b, f.deadline)),
                        _ => None,
                    }))
                }
                Some(found) => found,
            };
            if !live(deadline, || self.now()) {
                return Ok(None);
            }
            match slot {
                Slot::Value(v) => return Ok(Some((v, deadline))),
                Slot::Tombstone => return Ok(None),
                Slot::Blob(b) => match self.load_blob(key, &b)? {
                    Some(v) => return Ok(Some((v, deadline))),
                    // The entry was replaced and its blob collected since it
                    // was looked up: look again. Twice for the same entry
                    // means the blob is really gone.
                    None if missing == Some(seq) => return Err(missing_blob(key, &b)),
                    None => missing = Some(seq),
                },
            }
        }
    }

    /// The deadline of `key`'s live value: `Ok(None)` if it has none or the
    /// key has no live value.
    pub(crate) fn deadline_of(&self, key: &[u8]) -> Result<Option<UnixMillis>> {
        let found = {
            let shard = self.buffer.lock(self.buffer.shard_of(key));
            shard
                .get(key)
                .map(|e| (matches!(e.slot, Slot::Tombstone), e.deadline))
        };
        let (gone, deadline) = match found {
            Some(found) => found,
            None => match self.read_stored(key, false)? {
                Some(f) => (false, f.deadline),
                None => (true, None),
            },
        };
        Ok(deadline.filter(|&d| !gone && live(Some(d), || self.now())))
    }

    /// A read-modify-write of one key: `f` sees the live value (`None` if
    /// there is none) and decides the change, while the key's shard lock is
    /// held. With `need_bytes`, the value is loaded even if it is a blob.
    pub(crate) fn update<R>(
        &self,
        key: &[u8],
        need_bytes: bool,
        f: impl FnOnce(Option<Found>) -> Result<(Option<Change>, R)>,
    ) -> Result<R> {
        self.check_key(key)?;
        self.admit(key.len() + ENTRY_OVERHEAD)?;
        let index = self.buffer.shard_of(key);
        // A storage read made without the lock, and the generation it is
        // valid for.
        let mut from_storage: Option<(u64, Option<Found>)> = None;
        // A blob loaded without the lock.
        let mut loaded: Option<(u64, Bytes)> = None;
        let mut missing: Option<u64> = None;
        loop {
            let mut shard = self.buffer.lock(index);
            self.check_open()?;
            let mut found = match shard.get(key) {
                Some(e) => match &e.slot {
                    Slot::Tombstone => None,
                    _ if !live(e.deadline, || self.now()) => None,
                    Slot::Value(v) => Some(Found {
                        held: Held::Bytes(v.clone()),
                        deadline: e.deadline,
                        seq: e.seq,
                    }),
                    Slot::Blob(b) => Some(Found {
                        held: Held::Blob(*b),
                        deadline: e.deadline,
                        seq: e.seq,
                    }),
                },
                None => match &from_storage {
                    Some((generation, stored)) if *generation == shard.generation() => {
                        stored.clone().filter(|st| live(st.deadline, || self.now()))
                    }
                    _ => {
                        let generation = shard.generation();
                        drop(shard);
                        from_storage = Some((generation, self.read_stored(key, need_bytes)?));
                        continue;
                    }
                },
            };
            if let (
                true,
                Some(Found {
                    held: Held::Blob(b),
                    deadline,
                    seq,
                }),
            ) = (need_bytes, &found)
            {
                match &loaded {
                    Some((id, v)) if *id == b.id => {
                        found = Some(Found {
                            held: Held::Bytes(v.clone()),
                            deadline: *deadline,
                            seq: *seq,
                        })
                    }
                    _ => {
                        let b = *b;
                        drop(shard);
                        match self.load_blob(key, &b)? {
                            Some(v) => loaded = Some((b.id, v)),
                            None if missing == Some(b.id) => return Err(missing_blob(key, &b)),
                            None => missing = Some(b.id),
                        }
                        continue;
                    }
                }
            }
            let (change, r) = f(found)?;
            let inserted = change.map(|c| {
                self.buffer
                    .insert(&mut shard, key, c.slot, c.deadline, true)
            });
            drop(shard);
            if let Some(ins) = inserted {
                self.after_write(ins.first_dirty);
            }
            return Ok(r);
        }
    }

    /// Reads `key`'s record from storage (deadline not checked). With
    /// `load`, a blob value is loaded and checked.
    pub(crate) fn read_stored(&self, key: &[u8], load: bool) -> Result<Option<Found>> {
        let storage = self.storage()?;
        loop {
            let Some(raw) = storage.get_meta(key)? else {
                return Ok(None);
            };
            let rec = codec::decode_meta(key, &raw)?;
            let deadline = rec.deadline.map(UnixMillis);
            let held = match rec.value {
                ValueRef::Inline(v) => Held::Bytes(raw.slice_ref(v)),
                ValueRef::Blob(b) if !load => Held::Blob(b),
                ValueRef::Blob(b) => match self.load_blob(key, &b)? {
                    Some(v) => Held::Bytes(v),
                    None => {
                        // A flush may have replaced the record and removed
                        // its blob since it was read: read it again. If it
                        // is unchanged, the blob is really missing.
                        if storage.get_meta(key)?.as_deref() == Some(&raw[..]) {
                            return Err(missing_blob(key, &b));
                        }
                        continue;
                    }
                },
            };
            return Ok(Some(Found {
                held,
                deadline,
                seq: Seq(rec.seq),
            }));
        }
    }

    /// A blob, checked against its pointer; `None` if it is not there.
    pub(crate) fn read_blob(&self, key: &[u8], b: &BlobRef) -> Result<Option<Bytes>> {
        self.load_blob(key, b)
    }

    fn load_blob(&self, key: &[u8], b: &BlobRef) -> Result<Option<Bytes>> {
        match self.storage()?.get_blob(b.id)? {
            Some(v) => {
                b.check(key, &v)?;
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    /// Deletes expired keys: for each shard, the keys its expiry index shows
    /// past their deadline (at most `slice` per shard, if given) get a
    /// tombstone, which the next flush persists (record, blob and deadline
    /// entry removed). The index is exact, so a key written since it
    /// expired is not touched; a key held by a `modify` is not either (the
    /// purge waits for the shard lock). Returns the keys purged.
    pub(crate) fn purge(&self, slice: Option<usize>) -> u64 {
        if self.check_open().is_err() || self.health().is_poisoned() {
            return 0;
        }
        let now = self.now();
        let mut purged = 0;
        let mut first_dirty = false;
        for index in 0..SHARDS {
            if slice.is_some() && self.buffer.bytes() >= self.config.max_dirty_bytes {
                // Leave the rest for a later tick; the flusher drains first.
                self.flush.request_urgent();
                break;
            }
            let mut shard = self.buffer.lock(index);
            if self.check_open().is_err() {
                break;
            }
            for key in shard.expiry().expired(now, slice.unwrap_or(usize::MAX)) {
                let ins = self
                    .buffer
                    .insert(&mut shard, &key, Slot::Tombstone, None, false);
                first_dirty |= ins.first_dirty;
                purged += 1;
            }
        }
        if purged > 0 {
            Counters::add(&self.counters.expired, purged);
            self.after_write(first_dirty);
        }
        purged
    }
}

fn missing_blob(key: &[u8], b: &BlobRef) -> Error {
    Error::corrupt(
        Some(key),
        format!("the record points at blob {}, which is missing", b.id),
    )
}

impl Shared {
    /// Up to `limit` live keys with `prefix`, greater than `after`, in key
    /// order, with their values: dirty entries override stored records.
    pub(crate) fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        let storage = self.storage()?;
        let dirty = self.buffer.entries_with_prefix(prefix, after);
        let now = self.now();
        let mut out = Vec::new();
        let mut from: Vec<u8> = match after {
            Some(a) if a >= prefix => {
                let mut f = a.to_vec();
                f.push(0);
                f
            }
            _ => prefix.to_vec(),
        };
        // Stored records, page by page, merged with the dirty entries.
        let mut dirty = dirty.into_iter().peekable();
        let page = limit.clamp(1, 1024);
        loop {
            let records = storage.scan_meta(&from, page)?;
            let exhausted = records.len() < page;
            let mut last: Option<Bytes> = None;
            for (key, raw) in records {
                if !key.starts_with(prefix) {
                    last = None;
                    break;
                }
                // Dirty keys before this stored key.
                while let Some((dk, e)) = dirty.next_if(|(dk, _)| dk[..] < key[..]) {
                    self.push_dirty(&mut out, dk, e, now)?;
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
                // A dirty entry of this key replaces its stored record.
                if let Some((dk, e)) = dirty.next_if(|(dk, _)| dk[..] == key[..]) {
                    self.push_dirty(&mut out, dk, e, now)?;
                } else {
                    let rec = codec::decode_meta(&key, &raw)?;
                    if live(rec.deadline.map(UnixMillis), || now) {
                        let value = match rec.value {
                            ValueRef::Inline(v) => raw.slice_ref(v),
                            ValueRef::Blob(b) => match self.load_blob(&key, &b)? {
                                Some(v) => v,
                                // Replaced and collected since the page was
                                // read: the new value is read by key.
                                None => match self.read(&key)? {
                                    Some((v, _)) => v,
                                    None => {
                                        last = Some(key);
                                        continue;
                                    }
                                },
                            },
                        };
                        out.push((key.clone(), value));
                    }
                }
                if out.len() >= limit {
                    return Ok(out);
                }
                last = Some(key);
            }
            match last {
                Some(k) if !exhausted => {
                    from = k.to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        for (dk, e) in dirty {
            self.push_dirty(&mut out, dk, e, now)?;
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn push_dirty(
        &self,
        out: &mut Vec<(Bytes, Bytes)>,
        key: crate::buffer::dirty::Key,
        e: crate::buffer::Entry,
        now: UnixMillis,
    ) -> Result<()> {
        if !live(e.deadline, || now) {
            return Ok(());
        }
        let value = match e.slot {
            Slot::Value(v) => v,
            Slot::Tombstone => return Ok(()),
            Slot::Blob(b) => match self.load_blob(&key, &b)? {
                Some(v) => v,
                None => match self.read(&key)? {
                    Some((v, _)) => v,
                    None => return Ok(()),
                },
            },
        };
        out.push((Bytes::from(Vec::from(key)), value));
        Ok(())
    }
}
