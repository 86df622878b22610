//! [`Lookup`]: the one read path of a key. Every verb that reads a key (`get`,
//! `ttl`, the read-modify-writes, transaction reads) goes
//! through it, so a fix to the read path is made here once.
//!
//! The path: the key's dirty entry (active map, else frozen map, both under
//! the shard lock: [`Shard::get`]); else its record in storage; then, if the
//! caller wants the bytes, the blob the value points at. The storage and blob
//! reads are made **without** the shard lock, and what they return is trusted
//! only when a later look under the lock confirms it:
//!
//! - a stored record is used only while the shard's generation has not moved
//!   since before it was read (invariant 6: a release since then may have
//!   changed storage); otherwise it is read again;
//! - a blob is used only for the pointer it was loaded for; a blob found
//!   missing is looked up again (the entry or record was replaced and the
//!   blob collected meanwhile), and missing twice for the same version it is
//!   `Error::Corrupt`.
//!
//! A lookup is a small state machine so that a caller can drive it under its
//! own lock: [`Lookup::probe`] under the shard lock gives either the answer
//! ([`Seen`]) or the read to make ([`Fetch`]); [`Lookup::fetch`] makes it
//! without the lock; then probe again. [`Shared::lookup`] is that loop for
//! callers that only read; `Shared::update` runs it and then decides its
//! change under the same lock as the final probe.
//!
//! Deadlines are checked against the engine's clock at the final probe: an
//! expired value is absent (invariant 15).

use bytes::Bytes;

use crate::buffer::dirty::Shard;
use crate::buffer::{Entry, Seq, Slot};
use crate::clock::UnixMillis;
use crate::codec::{self, BlobRef, ValueRef};
use crate::error::{Error, Result};
use crate::shared::Shared;

/// Where a live value is.
#[derive(Debug, Clone)]
pub(crate) enum Held {
    /// In memory (dirty, or read from storage).
    Bytes(Bytes),
    /// In the blob tree, not loaded.
    Blob(BlobRef),
}

/// A value and its deadline, as a dirty entry or a stored record holds it.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub held: Held,
    pub deadline: Option<UnixMillis>,
    /// Seq of the write that produced this value (its version).
    pub seq: Seq,
}

impl Found {
    /// The value of a dirty entry; `None` for a tombstone. Deadline not
    /// checked.
    pub(crate) fn from_entry(e: &Entry) -> Option<Found> {
        let held = match &e.slot {
            Slot::Value(v) => Held::Bytes(v.clone()),
            Slot::Blob(b) => Held::Blob(*b),
            Slot::Tombstone => return None,
        };
        Some(Found {
            held,
            deadline: e.deadline,
            seq: e.seq,
        })
    }

    /// The value of a stored metadata record (`raw`, as read for `key`).
    /// Deadline not checked; a blob is not loaded.
    pub(crate) fn from_record(key: &[u8], raw: &Bytes) -> Result<Found> {
        let rec = codec::decode_meta(key, raw)?;
        Ok(Found {
            held: match rec.value {
                ValueRef::Inline(v) => Held::Bytes(raw.slice_ref(v)),
                ValueRef::Blob(b) => Held::Blob(b),
            },
            deadline: rec.deadline.map(UnixMillis),
            seq: Seq(rec.seq),
        })
    }

    /// The same value, unchanged, as a slot to write back with a new deadline.
    pub(crate) fn slot(self) -> Slot {
        match self.held {
            Held::Bytes(b) => Slot::Value(b),
            Held::Blob(b) => Slot::Blob(b),
        }
    }

    /// The value's bytes; empty for a blob that was not loaded (a lookup
    /// that asked for the bytes always has them).
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.held {
            Held::Bytes(b) => b,
            Held::Blob(_) => &[],
        }
    }

    /// What this value adds to an entry's cost: its length if it is held
    /// in memory, nothing for a blob pointer (see `dirty::cost_of`).
    pub(crate) fn held_len(&self) -> usize {
        match &self.held {
            Held::Bytes(b) => b.len(),
            Held::Blob(_) => 0,
        }
    }
}

/// What a lookup saw of one key.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// The live value (deadline checked), if any. With `load`, a blob value
    /// is loaded ([`Held::Bytes`]).
    pub found: Option<Found>,
    /// The seq of the dirty entry that answered (a live value's, or the
    /// tombstone's or expired value's that made the key absent); `None` when
    /// storage answered.
    pub dirty_seq: Option<Seq>,
    /// The shard's generation at the final probe. A storage answer is valid
    /// for exactly this generation.
    pub generation: u64,
    /// The cache token (`Backend::cache_token`) at the final probe, under
    /// which a storage answer was read and confirmed: asked for when storage
    /// answered, or always with [`Lookup::tokened`]; `None` otherwise, or
    /// when no token was given (another engine may write the key). On a
    /// store other engines write, a storage answer is valid only while the
    /// token stays.
    pub token: Option<u64>,
}

impl Seen {
    /// The live value's bytes (from a lookup made with `load`).
    pub(crate) fn into_value(self) -> Option<Bytes> {
        self.found.and_then(|f| match f.held {
            Held::Bytes(b) => Some(b),
            Held::Blob(_) => {
                debug_assert!(false, "a loading lookup returned a blob pointer");
                None
            }
        })
    }
}

/// A read a lookup needs, made without the shard lock by [`Lookup::fetch`].
#[derive(Debug)]
pub(crate) struct Fetch(Io);

#[derive(Debug)]
enum Io {
    /// The key's stored record; the shard was at `generation` before it,
    /// and the cache token at `token`.
    Record { generation: u64, token: Option<u64> },
    /// The blob of the value with this seq.
    Blob { seq: Seq, blob: BlobRef },
}

/// What [`Lookup::probe`] found.
#[derive(Debug)]
pub(crate) enum Step {
    /// The answer, valid while the shard lock of the probe is held.
    Seen(Seen),
    /// A read to make without the lock before probing again.
    Fetch(Fetch),
}

/// One key's lookup in progress: see the module documentation.
#[derive(Debug)]
pub(crate) struct Lookup<'k> {
    key: &'k [u8],
    /// Whether a blob value is to be loaded.
    load: bool,
    /// The stored record (`None`: no record), the generation it is valid
    /// for, and the cache token before it was read.
    stored: Option<(u64, Option<Found>, Option<u64>)>,
    /// A blob loaded without the lock, by id.
    blob: Option<(u64, Bytes)>,
    /// The version and blob id of a blob found missing.
    missing: Option<(Seq, u64)>,
    /// Whether [`Seen::token`] is asked for even when a dirty entry answers.
    tokened: bool,
}

impl<'k> Lookup<'k> {
    pub(crate) fn new(key: &'k [u8], load: bool) -> Lookup<'k> {
        Lookup {
            key,
            load,
            stored: None,
            blob: None,
            missing: None,
            tokened: false,
        }
    }

    /// The lookup with [`Seen::token`] always given (a transaction's reads,
    /// which its commit checks against the token of then).
    pub(crate) fn tokened(mut self) -> Lookup<'k> {
        self.tokened = true;
        self
    }

    /// Looks at the key under its shard's lock (`shard`): the answer, or the
    /// read to make first.
    pub(crate) fn probe(&mut self, shard: &mut Shard, s: &Shared) -> Result<Step> {
        let generation = shard.generation();
        // The cache token, asked for only when storage answers: only this
        // engine can change the key in storage while it stays the same
        // (`Backend::cache_token`).
        let mut token = None;
        // Whether the candidate is what storage holds, cacheable under the
        // current token.
        let mut clean = false;
        let (candidate, dirty_seq) = match shard.get(self.key) {
            Some(e) => {
                if self.tokened {
                    token = s.keeper.cache_token(self.key);
                }
                (Found::from_entry(e), Some(e.seq))
            }
            None => {
                token = s.keeper.cache_token(self.key);
                let cached = token.and_then(|t| shard.cached(self.key, t));
                match (&self.stored, cached) {
                    (_, Some(hit)) => {
                        clean = true;
                        (hit.clone(), None)
                    }
                    // On a store other engines write, the record must also
                    // have been read under the token of now: a partition
                    // that left this engine and came back since may hold
                    // another engine's write (the generation moves only
                    // with this engine's releases).
                    (Some((g, record, read_under)), None)
                        if *g == generation && (*read_under == token || s.keeper.exclusive()) =>
                    {
                        // Confirmed under the lock: what storage holds now.
                        if let Some(t) = token.filter(|t| *read_under == Some(*t)) {
                            shard.cache_clean(self.key, record.clone(), t);
                            clean = true;
                        }
                        (record.clone(), None)
                    }
                    _ => {
                        return Ok(Step::Fetch(Fetch(Io::Record { generation, token })));
                    }
                }
            }
        };
        let mut loaded_clean = false;
        let found = match candidate.filter(|f| live(f.deadline, || s.now())) {
            Some(Found {
                held: Held::Blob(b),
                deadline,
                seq,
            }) if self.load => match &self.blob {
                Some((id, v)) if *id == b.id => {
                    loaded_clean = clean;
                    Some(Found {
                        held: Held::Bytes(v.clone()),
                        deadline,
                        seq,
                    })
                }
                // The same version again after its blob was found missing:
                // nothing replaced it, so the blob is really gone.
                _ if self.missing == Some((seq, b.id)) => return Err(missing_blob(self.key, &b)),
                _ => return Ok(Step::Fetch(Fetch(Io::Blob { seq, blob: b }))),
            },
            other => other,
        };
        if let Some(t) = token.filter(|_| loaded_clean) {
            // The stored value with its blob loaded: the next read of this
            // key needs no storage read at all.
            shard.cache_clean(self.key, found.clone(), t);
        }
        Ok(Step::Seen(Seen {
            found,
            dirty_seq,
            generation,
            token,
        }))
    }

    /// Makes the read `probe` asked for. Call without any shard lock held.
    pub(crate) fn fetch(&mut self, s: &Shared, fetch: Fetch) -> Result<()> {
        match fetch.0 {
            Io::Record { generation, token } => {
                self.stored = Some((generation, s.read_record(self.key)?, token));
            }
            Io::Blob { seq, blob } => match s.load_blob(self.key, &blob)? {
                Some(v) => self.blob = Some((blob.id, v)),
                None => self.missing = Some((seq, blob.id)),
            },
        }
        Ok(())
    }
}

impl Shared {
    /// The one read path: what `key` holds now (dirty entry, else storage;
    /// with `load`, a blob value loaded). Takes the key's shard lock for each
    /// probe, never across a storage read.
    pub(crate) fn lookup(&self, key: &[u8], load: bool) -> Result<Seen> {
        self.run_lookup(Lookup::new(key, load))
    }

    /// [`Shared::lookup`] with the cache token always given
    /// ([`Lookup::tokened`]).
    pub(crate) fn lookup_tokened(&self, key: &[u8], load: bool) -> Result<Seen> {
        self.run_lookup(Lookup::new(key, load).tokened())
    }

    fn run_lookup(&self, mut lookup: Lookup<'_>) -> Result<Seen> {
        let index = self.buffer.shard_of(lookup.key);
        loop {
            let step = lookup.probe(&mut self.buffer.lock(index), self)?;
            match step {
                Step::Seen(seen) => return Ok(seen),
                Step::Fetch(fetch) => lookup.fetch(self, fetch)?,
            }
        }
    }

    /// The storage step of the read path: `key`'s stored record, decoded
    /// (deadline not checked, blob not loaded).
    pub(crate) fn read_record(&self, key: &[u8]) -> Result<Option<Found>> {
        match self.storage()?.get_meta(key)? {
            Some(raw) => Found::from_record(key, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// The blob step of the read path: a blob's value, checked against its
    /// pointer (and decompressed, if stored compressed); `None` if the blob
    /// is not there.
    pub(crate) fn load_blob(&self, key: &[u8], b: &BlobRef) -> Result<Option<Bytes>> {
        match self.storage()?.get_blob(b.id)? {
            Some(stored) => b.value(key, stored).map(Some),
            None => Ok(None),
        }
    }
}

/// Whether a value with `deadline` is live at `now` (computed only if there
/// is a deadline).
pub(crate) fn live(deadline: Option<UnixMillis>, now: impl FnOnce() -> UnixMillis) -> bool {
    deadline.is_none_or(|d| d > now())
}

fn missing_blob(key: &[u8], b: &BlobRef) -> Error {
    Error::corrupt(
        Some(key),
        format!("the record points at blob {}, which is missing", b.id),
    )
}
