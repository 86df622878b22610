//! Keyspaces: the engine's default keyspace and named [`Tree`]s, sharing one
//! buffer, one flush and one checkpoint; and the verbs every keyspace has.
//!
//! Inside the engine a key is an **internal key**: a keyspace prefix, then
//! the user's key. The prefix is a tag byte, which is also the first byte of
//! the record's key in the metadata tree, so the default keyspace is stored
//! exactly as in format version 1:
//!
//! - default keyspace: `[0x01] ++ key`;
//! - tree `name` (up to 255 bytes): `[0x02] ++ [len(name)] ++ name ++ key`.
//!
//! The encoding is prefix-free (a tag, then a length-prefixed name), so keys
//! of two keyspaces never collide, and the keys of one keyspace are exactly
//! the internal keys starting with its prefix: iterating or watching one
//! keyspace is a prefix range of internal keys and never meets another's
//! keys. Everything below the verbs (the dirty map, the read path,
//! transactions, flush cycles, the expiry index, storage) works on internal
//! keys and knows nothing of keyspaces; the verbs add the prefix to keys
//! going in and take it off keys coming out (iteration, events, the key of
//! an `Error::Corrupt`).
//!
//! Opening the first tree of a store writes format version 2 into the
//! format record, before any tree record can be committed, so that a build
//! that knows no trees refuses the store instead of silently missing their
//! records.

use std::ops::{Bound, Deref};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::access::{deadline_after, Change};
use crate::buffer::dirty::Inserted;
use crate::buffer::Slot;
use crate::clock::UnixMillis;
use crate::codec;
use crate::durability::Durability;
use crate::engine::{not_reentrant, ClosureGuard, Engine};
use crate::error::{Error, Result};
use crate::iter::{key_range, prefix_end, Iter, KeyRange};
use crate::lookup::Found;
use crate::shared::Shared;
use crate::value::Value;
use crate::watch::Subscriber;

/// Tag of the default keyspace's internal keys (and of their records' keys
/// in the metadata tree).
pub(crate) const DEFAULT_TAG: u8 = 0x01;
/// Tag of the trees' internal keys.
pub(crate) const TREE_TAG: u8 = 0x02;

/// Longest tree name, in bytes.
pub(crate) const MAX_TREE_NAME: usize = 255;

/// A keyspace: the prefix of its internal keys.
#[derive(Debug, Clone)]
pub(crate) struct Keyspace {
    prefix: Bytes,
}

/// The default keyspace.
pub(crate) static DEFAULT: Keyspace = Keyspace {
    prefix: Bytes::from_static(&[DEFAULT_TAG]),
};

/// An internal key, built on the stack when it is short.
pub(crate) struct KeyBuf {
    stack: [u8; 80],
    len: usize,
    heap: Vec<u8>,
}

impl Deref for KeyBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.stack[..self.len]
        } else {
            &self.heap
        }
    }
}

impl Keyspace {
    fn tree(name: &[u8]) -> Result<Keyspace> {
        if name.len() > MAX_TREE_NAME {
            return Err(Error::TooLarge {
                what: "tree name",
                len: name.len(),
                max: MAX_TREE_NAME,
            });
        }
        let mut prefix = Vec::with_capacity(name.len() + 2);
        prefix.push(TREE_TAG);
        prefix.push(name.len() as u8);
        prefix.extend_from_slice(name);
        Ok(Keyspace {
            prefix: Bytes::from(prefix),
        })
    }

    pub(crate) fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The internal key of `key`.
    pub(crate) fn key(&self, key: &[u8]) -> KeyBuf {
        let len = self.prefix.len() + key.len();
        let mut buf = KeyBuf {
            stack: [0; 80],
            len,
            heap: Vec::new(),
        };
        match buf.stack.get_mut(..len) {
            Some(stack) => {
                stack[..self.prefix.len()].copy_from_slice(&self.prefix);
                stack[self.prefix.len()..].copy_from_slice(key);
            }
            None => {
                buf.heap.reserve_exact(len);
                buf.heap.extend_from_slice(&self.prefix);
                buf.heap.extend_from_slice(key);
            }
        }
        buf
    }

    /// The internal range of a user range.
    pub(crate) fn range(&self, range: KeyRange) -> KeyRange {
        let inner = |k: Vec<u8>| [&self.prefix[..], &k].concat();
        KeyRange {
            lo: match range.lo {
                Bound::Included(k) => Bound::Included(inner(k)),
                Bound::Excluded(k) => Bound::Excluded(inner(k)),
                Bound::Unbounded => Bound::Included(self.prefix.to_vec()),
            },
            hi: match range.hi {
                Bound::Included(k) => Bound::Included(inner(k)),
                Bound::Excluded(k) => Bound::Excluded(inner(k)),
                Bound::Unbounded => match prefix_end(&self.prefix) {
                    Some(end) => Bound::Excluded(end),
                    None => Bound::Unbounded,
                },
            },
        }
    }

    /// An error for the caller: the key of a corrupt record is shown as the
    /// caller's key.
    pub(crate) fn user_error(&self, e: Error) -> Error {
        match e {
            Error::Corrupt {
                key: Some(k),
                detail,
            } if k.starts_with(&self.prefix) => Error::Corrupt {
                key: Some(k[self.prefix.len()..].to_vec()),
                detail,
            },
            e => e,
        }
    }
}

/// An internal key split into its keyspace prefix and the user's key. A key
/// that is not a whole internal key (never made by a keyspace) is all
/// prefix. Used by the PostgreSQL backend's partitioning.
#[cfg_attr(
    not(feature = "postgres"),
    allow(dead_code, reason = "used by the postgres feature")
)]
pub(crate) fn split_internal(internal: &[u8]) -> (&[u8], &[u8]) {
    let prefix = match internal {
        [DEFAULT_TAG, ..] => 1,
        [TREE_TAG, len, ..] => 2 + usize::from(*len),
        _ => internal.len(),
    };
    internal.split_at(prefix.min(internal.len()))
}

/// The key a user sees for an internal key of any keyspace (its default
/// keyspace key, or the internal key of a tree's record as stored): for
/// messages and reports that list keys of every keyspace.
pub(crate) fn shown_key(internal: &[u8]) -> &[u8] {
    match internal.split_first() {
        Some((&DEFAULT_TAG, user)) => user,
        _ => internal,
    }
}

/// A named keyspace of an engine, from [`Engine::tree`]: its keys never
/// meet another keyspace's (the engine's own, or another tree's), while it
/// shares the engine's buffer, flush cycles and checkpoints, so a
/// transaction can span trees atomically ([`Transaction::tree`](crate::Transaction::tree)).
///
/// It has every keyspace verb of [`Engine`] (`get`, `set`, `set_with`,
/// `modify`, `compare_and_swap`, `range`, `watch_prefix`, ...), over its own
/// keys. Cheap to clone; keeps the engine open while it lives.
#[derive(Clone)]
pub struct Tree {
    engine: Engine,
    ks: Keyspace,
    name: Bytes,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("name", &crate::error::DisplayKey(&self.name).to_string())
            .finish_non_exhaustive()
    }
}

impl Tree {
    /// The tree's name.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The engine the tree belongs to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn keyspace(&self) -> &Keyspace {
        &self.ks
    }

    fn parts(&self) -> (&Engine, &Keyspace) {
        (&self.engine, &self.ks)
    }
}

impl Engine {
    /// The tree (named keyspace) `name` of this store, up to 255 bytes. A
    /// tree exists as long as it has keys; opening one costs nothing more
    /// than a handle (the first tree ever opened in a store also marks the
    /// store's format as version 2, which builds without trees refuse).
    ///
    /// Errors: [`Error::TooLarge`] for a longer name,
    /// [`Error::Closed`].
    pub fn tree(&self, name: impl AsRef<[u8]>) -> Result<Tree> {
        not_reentrant()?;
        let name = name.as_ref();
        let ks = Keyspace::tree(name)?;
        let s = self.shared();
        s.check_open()?;
        mark_trees(s)?;
        Ok(Tree {
            engine: self.clone(),
            ks,
            name: Bytes::copy_from_slice(name),
        })
    }

    fn parts(&self) -> (&Engine, &Keyspace) {
        (self, &DEFAULT)
    }
}

/// Writes format version 2 into the format record, once. Written before any
/// tree write can be acknowledged, so sled's log holds it before any commit
/// of a tree record (a recovered prefix with one has the other).
fn mark_trees(s: &Shared) -> Result<()> {
    use std::sync::atomic::Ordering;
    if s.trees_marked.load(Ordering::Acquire) {
        return Ok(());
    }
    let _once = s.cycle_lock.lock();
    if s.trees_marked.load(Ordering::Acquire) {
        return Ok(());
    }
    s.storage()?.raise_format(codec::FORMAT_VERSION_TREES)?;
    s.trees_marked.store(true, Ordering::Release);
    Ok(())
}

/// The verbs of a keyspace, for [`Engine`] (the default keyspace) and
/// [`Tree`]: one body each, over `parts()` (the engine and the keyspace).
macro_rules! keyspace_verbs {
    ($t:ty) => {
        impl $t {
            /// The value of `key`, or `None` if it has none (never set,
            /// deleted, or expired). Sees every write acknowledged before the
            /// call, from any thread, whether flushed or not.
            pub fn get(&self, key: &[u8]) -> Result<Option<Value>> {
                let (e, ks) = self.parts();
                let s = e.shared();
                read_verb(s, ks, key, |s, key| Ok(s.read(key)?.map(|(v, _)| Value(v))))
            }

            /// Whether `key` has a live value. Cheaper than `get` for a value
            /// in the blob tree: the value is not loaded.
            pub fn contains_key(&self, key: &[u8]) -> Result<bool> {
                let (e, ks) = self.parts();
                read_verb(e.shared(), ks, key, |s, key| {
                    Ok(s.lookup(key, false)?.found.is_some())
                })
            }

            /// The time `key` has left before it expires (whole
            /// milliseconds). `None` both when the key has no deadline and
            /// when it has no live value; use `get` to tell the two apart.
            pub fn ttl(&self, key: &[u8]) -> Result<Option<Duration>> {
                let (e, ks) = self.parts();
                read_verb(e.shared(), ks, key, |s, key| {
                    let now = s.now();
                    Ok(s.deadline_of(key)?
                        .map(|d| Duration::from_millis(d.0.saturating_sub(now.0))))
                })
            }

            /// Sets `key` to `value`. Any deadline the key had is cleared (it
            /// gets `Config::default_ttl` if one is set). Returns once the
            /// write is visible to every reader; it reaches disk within
            /// `write_delay` plus one flush cycle, or at the next
            /// [`Engine::checkpoint`].
            ///
            /// Waits while the buffer is full (`max_dirty_bytes`). Errors:
            /// [`Error::TooLarge`], [`Error::Closed`], and
            /// [`Error::FlushFailing`] or [`Error::Poisoned`] when the engine
            /// cannot persist writes.
            pub fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
                let (e, ks) = self.parts();
                put(e.shared(), ks, key, value, Shared::default_deadline).map(drop)
            }

            /// `set`, returning only once the write is as durable as
            /// `durability` asks: [`Durability::Buffered`] is `set`;
            /// [`Durability::Flushed`] waits for the flush cycle that covers
            /// the write (it survives a crash of the process);
            /// [`Durability::Synced`] waits for the durable cycle that covers
            /// it (it survives a power cut). Concurrent callers share one
            /// cycle (group commit): many writers asking for `Synced` at once
            /// cost one fsync, not one each. A waiting writer starts a cycle
            /// at once, without waiting for `write_delay`.
            ///
            /// On an error from the wait (a failed flush,
            /// [`Error::Poisoned`], [`Error::Closed`] by a concurrent
            /// shutdown) the write has still been made and is visible; only
            /// its durability is not confirmed.
            pub fn set_with(&self, key: &[u8], value: &[u8], durability: Durability) -> Result<()> {
                let (e, ks) = self.parts();
                let s = e.shared();
                let written = put(s, ks, key, value, Shared::default_deadline)?;
                s.wait_for(&written, durability)
            }

            /// Sets `key` to `value`, to expire `ttl` from now (by the
            /// engine's clock). Once the deadline passes the key is absent to
            /// every read, and the purger deletes it from memory and disk. A
            /// zero `ttl` expires the key at once.
            pub fn set_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
                let (e, ks) = self.parts();
                put(e.shared(), ks, key, value, |s| {
                    Some(deadline_after(s.now(), ttl))
                })
                .map(drop)
            }

            /// Sets `key` to `value`, like `set` (the deadline is cleared, or
            /// `Config::default_ttl` given), and returns the value it
            /// replaced (`None` if there was no live value). The read and the
            /// write are one atomic step: no other write to `key` comes
            /// between them.
            pub fn replace(&self, key: &[u8], value: &[u8]) -> Result<Option<Value>> {
                let (e, ks) = self.parts();
                let s = e.shared();
                s.check_value(value.len())?;
                let value = Bytes::copy_from_slice(value);
                update_verb(s, ks, key, true, |found| {
                    let old = found.map(|f| Value(Bytes::copy_from_slice(f.bytes())));
                    let change = Change {
                        slot: Slot::Value(value),
                        deadline: s.default_deadline(),
                    };
                    Ok((Some(change), old))
                })
            }

            /// Sets `key` to `new` only if its live value is `expected`;
            /// `None` as `expected` means "absent", as `new` it deletes the
            /// key. Returns `true` when the value was as expected (and is now
            /// `new`), `false` otherwise (nothing written). Atomic with every
            /// other write to `key` (it decides under the same lock as
            /// `modify`). A key that keeps living keeps its deadline; a key
            /// it creates gets `Config::default_ttl`, like `modify`.
            pub fn compare_and_swap(
                &self,
                key: &[u8],
                expected: Option<&[u8]>,
                new: Option<&[u8]>,
            ) -> Result<bool> {
                let (e, ks) = self.parts();
                let s = e.shared();
                if let Some(v) = new {
                    s.check_value(v.len())?;
                }
                let new = new.map(Bytes::copy_from_slice);
                update_verb(s, ks, key, true, |found| {
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

            /// Gives an existing key a new deadline, `ttl` from now, without
            /// rewriting its value (only its metadata record is written).
            /// Returns `false` if the key has no live value.
            pub fn expire(&self, key: &[u8], ttl: Duration) -> Result<bool> {
                let (e, ks) = self.parts();
                let s = e.shared();
                update_verb(s, ks, key, s.metadata_change_needs_bytes(), |found| {
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

            /// Removes a key's deadline (it will not expire). Returns `true`
            /// if the key had a live value with a deadline.
            pub fn persist(&self, key: &[u8]) -> Result<bool> {
                let (e, ks) = self.parts();
                let s = e.shared();
                update_verb(s, ks, key, s.metadata_change_needs_bytes(), |found| {
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

            /// Removes `key`. Returns `true` if it had a live value.
            pub fn delete(&self, key: &[u8]) -> Result<bool> {
                let (e, ks) = self.parts();
                update_verb(e.shared(), ks, key, false, |found| {
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
            /// `f` gets the current value (`None` if there is none) and may
            /// change it; setting it to `None` deletes the key. No other
            /// write to `key` happens between the read and the write, so
            /// concurrent `modify` calls never lose an update. If `f` leaves
            /// the value as it was, nothing is written. A key's deadline is
            /// kept; a key that `f` creates gets `Config::default_ttl`, if
            /// set. An expired key is `None` to `f`.
            ///
            /// `f` runs while the engine holds a lock covering `key` and
            /// other keys: keep it short, and do not call the engine from it
            /// (such calls return [`Error::Reentrant`]). If `f` panics,
            /// nothing is written. If the new value needs room the buffer
            /// does not have, the call waits for it after `f` ran (without
            /// the lock; other writes of `key` wait for this one); if it then
            /// fails (for example [`Error::Closed`]), nothing is written.
            pub fn modify<R>(
                &self,
                key: &[u8],
                f: impl FnOnce(&mut Option<Vec<u8>>) -> R,
            ) -> Result<R> {
                let (e, ks) = self.parts();
                let s = e.shared();
                let max_value = s.config.value_limit();
                update_verb(s, ks, key, true, |found| {
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

            /// `get`, decoding the value with postcard. A value that does not
            /// decode as `T` is an [`Error::Decode`].
            pub fn get_as<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
                match self.get(key)? {
                    None => Ok(None),
                    Some(v) => decode(key, &v).map(Some),
                }
            }

            /// `set`, encoding the value with postcard.
            pub fn set_as<T: Serialize + ?Sized>(&self, key: &[u8], value: &T) -> Result<()> {
                self.set(key, &encode(value)?)
            }

            /// The live keys in `range` and their values, in key order; read
            /// from both ends with `next` and `next_back`:
            /// `range(b"a".as_slice()..b"b")`, `range::<&[u8], _>(..)`. Each
            /// page of up to 256 keys is one point in the write history; see
            /// [`Iter`] for what a concurrent write does to a running
            /// iteration. [`Iter::keys`] skips the values.
            pub fn range<K: AsRef<[u8]>, R: std::ops::RangeBounds<K>>(&self, range: R) -> Iter {
                let (e, ks) = self.parts();
                Iter::new(e.clone(), ks.range(key_range(&range)), ks.prefix().len())
            }

            /// Every live key and its value, in key order (see `range`).
            pub fn iter(&self) -> Iter {
                self.scan_prefix(b"")
            }

            /// The live keys starting with `prefix` (every key for an empty
            /// prefix) and their values, in key order (see `range`).
            pub fn scan_prefix(&self, prefix: &[u8]) -> Iter {
                let (e, ks) = self.parts();
                Iter::new(
                    e.clone(),
                    ks.range(KeyRange::prefix(prefix)),
                    ks.prefix().len(),
                )
            }

            /// The smallest live key, and its value.
            pub fn first(&self) -> Result<Option<(Value, Value)>> {
                self.iter().next().transpose()
            }

            /// The greatest live key, and its value.
            pub fn last(&self) -> Result<Option<(Value, Value)>> {
                self.iter().next_back().transpose()
            }

            /// The number of live keys. Counted by iterating the keys (values
            /// are not loaded): it costs a pass over the keyspace, and it is
            /// exact only when no write runs meanwhile (each page is one
            /// point in history, the whole count is not).
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

            /// Subscribes to changes of the keys starting with `prefix`
            /// (every key for an empty prefix). Each change is told only once
            /// it is flushed (`Durability::Flushed`, and `Buffered`, which is
            /// served the same: a watcher never sees a change that is only in
            /// memory) or synced (`Durability::Synced`): never one that a
            /// crash (a power cut, for `Synced`) could take back.
            ///
            /// Events come per flush cycle, in seq order: for each key the
            /// newest write the cycle persisted (a write replaced before it
            /// was flushed is never an event), as a value or a removal
            /// (delete, expiry, purge). A `Synced` subscriber gets a cycle's
            /// events at the next sync (a checkpoint, a `Synced` write,
            /// shutdown). A subscriber that does not keep up never slows
            /// writers: past 16 384 queued events it gets
            /// [`Event::Lagged`](crate::Event::Lagged) in place of what was
            /// dropped. The subscriber ends after shutdown; dropping it
            /// unsubscribes.
            pub fn watch_prefix(
                &self,
                prefix: &[u8],
                durability: Durability,
            ) -> Result<Subscriber> {
                let (e, ks) = self.parts();
                read_verb(e.shared(), ks, prefix, |s, prefix| {
                    s.watchers
                        .subscribe(prefix, ks.prefix().len(), durability)
                        .ok_or(Error::Closed)
                })
            }
        }
    };
}

keyspace_verbs!(Engine);
keyspace_verbs!(Tree);

/// A verb that reads `key` (or uses it as a prefix): checks, then `f` with
/// the internal key.
fn read_verb<T>(
    s: &Shared,
    ks: &Keyspace,
    key: &[u8],
    f: impl FnOnce(&Shared, &[u8]) -> Result<T>,
) -> Result<T> {
    not_reentrant()?;
    s.check_key(key)?;
    s.check_open()?;
    f(s, &ks.key(key)).map_err(|e| ks.user_error(e))
}

/// A read-modify-write of `key` (`Shared::update` over the internal key).
fn update_verb<R>(
    s: &Shared,
    ks: &Keyspace,
    key: &[u8],
    need_bytes: bool,
    f: impl FnOnce(Option<Found>) -> Result<(Option<Change>, R)>,
) -> Result<R> {
    not_reentrant()?;
    s.check_key(key)?;
    s.update(&ks.key(key), need_bytes, f)
        .map_err(|e| ks.user_error(e))
}

/// A blind write of a value, with the deadline `deadline` gives; returns its
/// seq and journal ticket.
fn put(
    s: &Shared,
    ks: &Keyspace,
    key: &[u8],
    value: &[u8],
    deadline: impl FnOnce(&Shared) -> Option<UnixMillis>,
) -> Result<Inserted> {
    not_reentrant()?;
    s.check_key(key)?;
    s.check_value(value.len())?;
    s.write(
        &ks.key(key),
        Slot::Value(Bytes::copy_from_slice(value)),
        deadline(s),
    )
}

/// A typed value, decoded with postcard.
pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T> {
    postcard::from_bytes(v).map_err(|e| Error::Decode {
        key: key.to_vec(),
        detail: e.to_string(),
    })
}

/// A typed value, encoded with postcard.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::Encode(e.to_string()))
}

const _: () = {
    const fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Tree>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_key_splits_into_its_keyspace_prefix_and_the_users_key() {
        assert_eq!(split_internal(b"\x01k"), (&b"\x01"[..], &b"k"[..]));
        assert_eq!(split_internal(b"\x01"), (&b"\x01"[..], &b""[..]));
        assert_eq!(
            split_internal(b"\x02\x03abckey"),
            (&b"\x02\x03abc"[..], &b"key"[..])
        );
        // Not whole internal keys: all prefix, never a panic.
        assert_eq!(
            split_internal(b"\x02\x09ab"),
            (&b"\x02\x09ab"[..], &b""[..])
        );
        assert_eq!(split_internal(b"\x02"), (&b"\x02"[..], &b""[..]));
        assert_eq!(split_internal(b""), (&b""[..], &b""[..]));
    }
}
