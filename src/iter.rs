//! [`Iter`]: live keys in a range, in key order, from either end, merged
//! across the dirty map and storage, page by page; [`Keys`], the same without
//! the values.
//!
//! A **page** is up to [`PAGE`] keys nearest to one end of the range not yet
//! read, and is one point in the write history:
//!
//! 1. Under every shard lock at once ([`DirtyMap::nearest`]), the dirty
//!    entries (active, else frozen) of the `PAGE` keys in the range nearest
//!    to the end being read, and the freeze count.
//! 2. Without any lock, up to `PAGE` stored records from the same end.
//! 3. If a freeze happened since step 1, storage may hold a commit of writes
//!    made after the snapshot: the page is read again. Otherwise every
//!    record storage changed since step 1 belongs to a frozen map taken in
//!    step 1, whose entry overrides it: the page is the state at step 1.
//!    After [`OPTIMISTIC`] tries the page is read under the cycle lock, where
//!    no cycle commits or collects blobs.
//! 4. The page covers the range up to the nearer of the last dirty key and
//!    the last stored key read (whichever side may have more); dirty entries
//!    override records; tombstones and values expired at step 1 are left
//!    out; blob values are loaded (a blob collected meanwhile means a cycle
//!    committed since: the page is read again).
//!
//! Between pages the engine goes on: a key written or deleted in a part of
//! the range not yet read shows its state when that part is read; one in a
//! part already returned is not seen again. Every key that is live for the
//! whole iteration is returned exactly once, and no key is returned twice,
//! whichever ends are read.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use bytes::Bytes;

use crate::buffer::dirty::{Entry, Key};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::lookup::{live, Found, Held};
use crate::shared::Shared;
use crate::value::Value;

/// Keys read per page.
pub(crate) const PAGE: usize = 256;

/// Tries at reading a page without the cycle lock.
const OPTIMISTIC: u32 = 3;

/// A range of keys, as bounds on both ends.
#[derive(Debug, Clone)]
pub(crate) struct KeyRange {
    pub lo: Bound<Vec<u8>>,
    pub hi: Bound<Vec<u8>>,
}

impl KeyRange {
    pub(crate) fn contains(&self, k: &[u8]) -> bool {
        let above = match &self.lo {
            Bound::Included(l) => k >= &l[..],
            Bound::Excluded(l) => k > &l[..],
            Bound::Unbounded => true,
        };
        above
            && match &self.hi {
                Bound::Included(h) => k <= &h[..],
                Bound::Excluded(h) => k < &h[..],
                Bound::Unbounded => true,
            }
    }

    /// Whether no key can be in the range.
    fn is_empty(&self) -> bool {
        match (&self.lo, &self.hi) {
            (Bound::Included(l), Bound::Included(h)) => l > h,
            (Bound::Included(l), Bound::Excluded(h)) | (Bound::Excluded(l), Bound::Included(h)) => {
                l >= h
            }
            // (l, h) holds l + [0] if that is below h.
            (Bound::Excluded(l), Bound::Excluded(h)) => {
                let mut next = l.clone();
                next.push(0);
                next >= *h
            }
            (_, Bound::Excluded(h)) => h.is_empty(),
            _ => false,
        }
    }

    /// The smallest key in the range, for a forward storage scan.
    fn start(&self) -> Vec<u8> {
        match &self.lo {
            Bound::Included(l) => l.clone(),
            Bound::Excluded(l) => {
                let mut k = l.clone();
                k.push(0);
                k
            }
            Bound::Unbounded => Vec::new(),
        }
    }

    /// The exclusive upper end, for a reverse storage scan.
    fn end(&self) -> Option<Vec<u8>> {
        match &self.hi {
            Bound::Included(h) => {
                let mut k = h.clone();
                k.push(0);
                Some(k)
            }
            Bound::Excluded(h) => Some(h.clone()),
            Bound::Unbounded => None,
        }
    }

    /// All keys starting with `prefix`.
    pub(crate) fn prefix(prefix: &[u8]) -> KeyRange {
        KeyRange {
            lo: Bound::Included(prefix.to_vec()),
            hi: match prefix_end(prefix) {
                Some(end) => Bound::Excluded(end),
                None => Bound::Unbounded,
            },
        }
    }
}

/// The smallest key greater than every key starting with `prefix`; `None`
/// if there is none (the prefix is empty or all 0xFF).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A page: live keys (and values, if asked) in reading order, and the last
/// key it covers (`None`: it reached the far end of the range).
struct Page {
    items: Vec<(Bytes, Option<Bytes>)>,
    covered: Option<Bytes>,
}

/// Why a page must be read again.
enum Retry {
    Again,
    Failed(Error),
}

impl From<Error> for Retry {
    fn from(e: Error) -> Retry {
        Retry::Failed(e)
    }
}

impl Shared {
    /// One page of `range`, from its start (from its end with `rev`); see
    /// the module documentation.
    fn page(&self, range: &KeyRange, rev: bool, values: bool) -> Result<Page> {
        for _ in 0..OPTIMISTIC {
            match self.try_page(range, rev, values, false) {
                Ok(page) => return Ok(page),
                Err(Retry::Again) => {}
                Err(Retry::Failed(e)) => return Err(e),
            }
        }
        // Cycle lock, then shard locks: the global order.
        let _cycle = self.cycle_lock.lock();
        match self.try_page(range, rev, values, true) {
            Ok(page) => Ok(page),
            Err(Retry::Failed(e)) => Err(e),
            Err(Retry::Again) => Err(Error::Storage(
                "a page of an iteration changed under the cycle lock".into(),
            )),
        }
    }

    fn try_page(
        &self,
        range: &KeyRange,
        rev: bool,
        values: bool,
        locked: bool,
    ) -> std::result::Result<Page, Retry> {
        let (freezes, dirty) = self.buffer.nearest(range, rev, PAGE);
        let now = self.now();
        let stored = {
            let storage = self.storage()?;
            if rev {
                storage.scan_meta_rev(&range.start(), range.end().as_deref(), PAGE)?
            } else {
                storage.scan_meta(&range.start(), PAGE)?
            }
        };
        if !locked && self.buffer.freezes() != freezes {
            return Err(Retry::Again);
        }
        // Either side may have more keys beyond what it returned: the page
        // ends at the nearer of their last keys. Storage returns its keys
        // from the near end, so its last is its farthest; a last key outside
        // the range means the range holds no more stored keys.
        let stored_last = if stored.len() >= PAGE {
            stored
                .last()
                .map(|(k, _)| k.clone())
                .filter(|k| range.contains(k))
        } else {
            None
        };
        let stored: BTreeMap<Bytes, Bytes> = stored
            .into_iter()
            .filter(|(k, _)| range.contains(k))
            .collect();
        let dirty_last = (dirty.len() >= PAGE).then(|| {
            let mut keys = dirty.keys();
            let k = if rev { keys.next() } else { keys.next_back() };
            k.map(|k| k.to_vec()).unwrap_or_default()
        });
        let stored_last = stored_last.map(|k| k.to_vec());
        let covered: Option<Vec<u8>> = match (dirty_last, stored_last) {
            (Some(d), Some(s)) => Some(if rev { d.max(s) } else { d.min(s) }),
            (Some(k), None) | (None, Some(k)) => Some(k),
            (None, None) => None,
        };
        let within = |k: &[u8]| match &covered {
            None => true,
            Some(c) if rev => k >= &c[..],
            Some(c) => k <= &c[..],
        };
        let mut merged: BTreeMap<Bytes, Option<Found>> = BTreeMap::new();
        for (k, raw) in stored.iter().filter(|(k, _)| within(k)) {
            merged.insert(k.clone(), Some(Found::from_record(k, raw)?));
        }
        for (k, e) in dirty.iter().filter(|(k, _)| within(k)) {
            merged.insert(key_bytes(k), found_of(e));
        }
        let mut items = Vec::with_capacity(merged.len());
        for (k, found) in merged {
            let Some(found) = found.filter(|f| live(f.deadline, || now)) else {
                continue;
            };
            let value = match (values, found.held) {
                (false, _) => None,
                (true, Held::Bytes(v)) => Some(v),
                (true, Held::Blob(b)) => match self.load_blob(&k, &b)? {
                    Some(v) => Some(v),
                    None if locked => {
                        return Err(Retry::Failed(Error::corrupt(
                            Some(&k),
                            format!("the record points at blob {}, which is missing", b.id),
                        )))
                    }
                    // Collected since: a cycle committed a newer value.
                    None => return Err(Retry::Again),
                },
            };
            items.push((k, value));
        }
        if rev {
            items.reverse();
        }
        Ok(Page {
            items,
            covered: covered.map(Bytes::from),
        })
    }
}

fn key_bytes(k: &Key) -> Bytes {
    Bytes::copy_from_slice(k)
}

fn found_of(e: &Entry) -> Option<Found> {
    Found::from_entry(e)
}

/// An iterator over the live keys of a range and their values, in key order,
/// from either end ([`DoubleEndedIterator`]); from [`Engine::range`],
/// [`Engine::iter`] and [`Engine::scan_prefix`].
///
/// It reads a page of up to 256 keys at a time, from the end it is read
/// from. **Each page is one point in the write history** (it never shows
/// half of a transaction, nor a value from a flush cycle mixed with an older
/// one), but the iteration as a whole is not a snapshot: a write made while
/// it runs is seen if it lands in a part of the range not read yet, and not
/// if it lands in a part already returned. A key that is live for the whole
/// iteration is returned exactly once; no key is returned twice. Values
/// expired when their page is read are left out.
///
/// Each page takes every shard lock of the buffer for a pass over the
/// buffered writes (writers wait meanwhile): iteration is meant for listing,
/// tools and moderate ranges, not a per-request hot path. After an error
/// the iterator ends.
///
/// Holds a handle to the engine: the engine is not shut down by dropping
/// its last `Engine` while an iterator is alive.
pub struct Iter {
    engine: Engine,
    /// What is left to read.
    range: KeyRange,
    /// The range is read entirely: what is left is in the buffers.
    exhausted: bool,
    /// Read from the front, ascending.
    front: VecDeque<(Bytes, Option<Bytes>)>,
    /// Read from the back, descending.
    back: VecDeque<(Bytes, Option<Bytes>)>,
    /// Load values (`false` for [`Keys`]).
    values: bool,
    /// Bytes stripped from every key returned (a namespace's prefix).
    strip: usize,
}

impl Iter {
    pub(crate) fn new(engine: Engine, range: KeyRange, strip: usize) -> Iter {
        let exhausted = range.is_empty();
        Iter {
            engine,
            range,
            exhausted,
            front: VecDeque::new(),
            back: VecDeque::new(),
            values: true,
            strip,
        }
    }

    /// The same iteration without the values: keys only, and values in the
    /// blob tree are never loaded.
    pub fn keys(mut self) -> Keys {
        self.values = false;
        Keys(self)
    }

    fn fill(&mut self, rev: bool) -> Result<()> {
        let page = self.engine.shared().page(&self.range, rev, self.values)?;
        match page.covered {
            None => self.exhausted = true,
            Some(c) => {
                let c = c.to_vec();
                if rev {
                    self.range.hi = Bound::Excluded(c);
                } else {
                    self.range.lo = Bound::Excluded(c);
                }
                self.exhausted = self.range.is_empty();
            }
        }
        if rev {
            self.back.extend(page.items);
        } else {
            self.front.extend(page.items);
        }
        Ok(())
    }

    fn step(&mut self, rev: bool) -> Option<Result<(Bytes, Option<Bytes>)>> {
        loop {
            let own = if rev { &mut self.back } else { &mut self.front };
            if let Some(item) = own.pop_front() {
                return Some(Ok(item));
            }
            if self.exhausted {
                // The other end read the rest.
                let other = if rev { &mut self.front } else { &mut self.back };
                return other.pop_back().map(Ok);
            }
            if let Err(e) = self.engine.check_iterable().and_then(|()| self.fill(rev)) {
                self.exhausted = true;
                self.front.clear();
                self.back.clear();
                return Some(Err(e));
            }
        }
    }

    fn item(&self, (k, v): (Bytes, Option<Bytes>)) -> (Value, Value) {
        (
            Value(k.slice(self.strip.min(k.len())..)),
            Value(v.unwrap_or_default()),
        )
    }
}

impl Iterator for Iter {
    type Item = Result<(Value, Value)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step(false).map(|r| r.map(|kv| self.item(kv)))
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(true).map(|r| r.map(|kv| self.item(kv)))
    }
}

impl std::fmt::Debug for Iter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iter")
            .field("exhausted", &self.exhausted)
            .finish_non_exhaustive()
    }
}

/// The keys of an [`Iter`], without loading values; from [`Iter::keys`].
#[derive(Debug)]
pub struct Keys(Iter);

impl Iterator for Keys {
    type Item = Result<Value>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|r| r.map(|(k, _)| k))
    }
}

impl DoubleEndedIterator for Keys {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|r| r.map(|(k, _)| k))
    }
}

/// Turns any `RangeBounds` over keys into a [`KeyRange`].
pub(crate) fn key_range<K: AsRef<[u8]>, R: std::ops::RangeBounds<K>>(range: &R) -> KeyRange {
    let own = |b: Bound<&K>| match b {
        Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    };
    KeyRange {
        lo: own(range.start_bound()),
        hi: own(range.end_bound()),
    }
}
