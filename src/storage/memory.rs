//! [`MemoryStorage`]: the [`Storage`] seam over maps in memory (the **memory
//! backend**), for stores made by [`Config::temporary`](crate::Config::temporary).
//!
//! A memory store's contents ([`Contents`]) live behind an `Arc` that the
//! config and its clones hold; [`MemoryBackend::open`] returns a
//! [`MemoryStorage`] over them. So the keeper's reopen after a failure, and a
//! new `Engine::open` with a clone of the config, find the same data, as they
//! would find the same files in a directory. While a `MemoryStorage` is open
//! another open fails with [`Error::Locked`], as sled's file lock makes it
//! for a directory; dropping the storage (the keeper's `close`, a simulated
//! crash) releases it.
//!
//! What it keeps of the [`Storage`] promises:
//! - two keyspaces: the metadata tree as three maps (user records, the
//!   deadline index, system records) and the blob tree as a fourth;
//! - an atomic commit: [`Storage::commit`] applies a whole commit under the
//!   write lock, so a reader sees all of it or none, and nothing can stop it
//!   half way (there is no undo log, and [`Storage::settle`] has nothing
//!   to finish);
//! - ordering and durability hold within the process: a write is in the maps
//!   once its call returns, so [`Storage::flush`] and [`Storage::sync`] have
//!   nothing to do. A simulated crash (`testing::halt`) loses only the dirty
//!   map, as with sled; the end of the process loses everything, and there is
//!   no power cut to survive;
//! - the durable record is kept beside the maps, replaced whole.
//!
//! Locks: the maps' `RwLock` and the durable record's mutex are leaf locks,
//! held for the length of one call.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use super::{Backend, BlobId, Commit, DeadlineOp, MetaOp, Storage, SysKey};
use crate::codec::DurableRecord;
use crate::error::{Error, Result};

/// Numbers the memory stores of this process, for their names.
static STORES: AtomicU64 = AtomicU64::new(1);

/// Everything a memory store holds, shared by the configs (and engines) that
/// name it. Dropped with the last of them.
pub(crate) struct Contents {
    /// `memory:N`: unique in the process, names no directory.
    name: PathBuf,
    trees: RwLock<Trees>,
    durable: Mutex<Option<DurableRecord>>,
    /// Whether a [`MemoryStorage`] is open over these contents.
    in_use: AtomicBool,
}

impl Contents {
    /// A new, blank memory store.
    pub(crate) fn new() -> Arc<Contents> {
        let n = STORES.fetch_add(1, Ordering::Relaxed);
        Arc::new(Contents {
            name: PathBuf::from(format!("memory:{n}")),
            trees: RwLock::new(Trees::default()),
            durable: Mutex::new(None),
            in_use: AtomicBool::new(false),
        })
    }

    /// The store's name (`memory:N`), used where a directory would be.
    pub(crate) fn name(&self) -> &Path {
        &self.name
    }
}

/// The metadata tree (three maps) and the blob tree.
#[derive(Default)]
struct Trees {
    /// User key -> metadata record.
    meta: BTreeMap<Bytes, Bytes>,
    /// User key -> deadline record (the deadline index).
    deadlines: BTreeMap<Bytes, Bytes>,
    /// System records.
    sys: BTreeMap<SysKey, Bytes>,
    /// Blob id -> value.
    blobs: BTreeMap<BlobId, Bytes>,
}

impl Trees {
    fn apply_deadline(&mut self, key: &Bytes, op: DeadlineOp) {
        match op {
            DeadlineOp::Keep => {}
            DeadlineOp::Set(record) => {
                self.deadlines.insert(key.clone(), Bytes::from(record));
            }
            DeadlineOp::Clear => {
                self.deadlines.remove(key);
            }
        }
    }
}

/// Up to `limit` entries of `map` with keys `>= from`, in key order.
fn scan(map: &BTreeMap<Bytes, Bytes>, from: &[u8], limit: usize) -> Vec<(Bytes, Bytes)> {
    map.range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Opens a memory store (see [`Backend`]).
pub(crate) struct MemoryBackend {
    pub contents: Arc<Contents>,
}

impl Backend for MemoryBackend {
    fn open(&self) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(MemoryStorage::open(&self.contents)?))
    }

    fn probe(&self) -> Result<()> {
        Ok(())
    }
}

/// An open memory store. Dropping it releases the store for the next open.
pub(crate) struct MemoryStorage {
    contents: Arc<Contents>,
}

impl MemoryStorage {
    /// Opens the store, or [`Error::Locked`] while another storage has it
    /// open.
    pub(crate) fn open(contents: &Arc<Contents>) -> Result<MemoryStorage> {
        contents
            .in_use
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| Error::Locked {
                path: contents.name.clone(),
            })?;
        Ok(MemoryStorage {
            contents: Arc::clone(contents),
        })
    }
}

impl Drop for MemoryStorage {
    fn drop(&mut self) {
        self.contents.in_use.store(false, Ordering::Release);
    }
}

impl Storage for MemoryStorage {
    fn get_meta(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.contents.trees.read().meta.get(key).cloned())
    }

    fn scan_meta(&self, from: &[u8], limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        Ok(scan(&self.contents.trees.read().meta, from, limit))
    }

    fn scan_meta_rev(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        let trees = self.contents.trees.read();
        let hi = match to {
            Some(hi) if hi <= from => return Ok(Vec::new()),
            Some(hi) => Bound::Excluded(hi),
            None => Bound::Unbounded,
        };
        Ok(trees
            .meta
            .range::<[u8], _>((Bound::Included(from), hi))
            .rev()
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_deadlines(&self, from: &[u8], limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        Ok(scan(&self.contents.trees.read().deadlines, from, limit))
    }

    fn scan_blobs(&self, from: BlobId, limit: usize) -> Result<Vec<(BlobId, Bytes)>> {
        Ok(self
            .contents
            .trees
            .read()
            .blobs
            .range(from..)
            .take(limit)
            .map(|(id, v)| (*id, v.clone()))
            .collect())
    }

    fn get_blob(&self, id: BlobId) -> Result<Option<Bytes>> {
        Ok(self.contents.trees.read().blobs.get(&id).cloned())
    }

    fn put_blob(&self, id: BlobId, value: &[u8]) -> Result<()> {
        let value = Bytes::copy_from_slice(value);
        self.contents.trees.write().blobs.insert(id, value);
        Ok(())
    }

    fn remove_blobs(&self, ids: &[BlobId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut trees = self.contents.trees.write();
        for id in ids {
            trees.blobs.remove(id);
        }
        Ok(())
    }

    fn remove_blobs_from(&self, first: BlobId) -> Result<usize> {
        Ok(self.contents.trees.write().blobs.split_off(&first).len())
    }

    fn path(&self) -> PathBuf {
        self.contents.name.clone()
    }

    fn is_blank(&self) -> Result<bool> {
        let trees = self.contents.trees.read();
        Ok(trees.meta.is_empty()
            && trees.deadlines.is_empty()
            && trees.sys.is_empty()
            && trees.blobs.is_empty())
    }

    fn blobs_empty(&self) -> Result<bool> {
        Ok(self.contents.trees.read().blobs.is_empty())
    }

    fn commit(&self, commit: Commit) -> Result<()> {
        // Everything is applied under one write lock: readers see the
        // commit whole or not at all, and nothing in here can fail.
        let mut trees = self.contents.trees.write();
        for op in commit.ops {
            match op {
                MetaOp::Put {
                    key,
                    record,
                    deadline,
                } => {
                    let key = Bytes::from(key);
                    trees.apply_deadline(&key, deadline);
                    trees.meta.insert(key, Bytes::from(record));
                }
                MetaOp::Remove { key, deadline } => {
                    let key = Bytes::from(key);
                    trees.apply_deadline(&key, deadline);
                    trees.meta.remove(&key);
                }
            }
        }
        for (key, value) in commit.sys {
            match value {
                Some(v) => {
                    trees.sys.insert(key, Bytes::from(v));
                }
                None => {
                    trees.sys.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn get_sys(&self, key: SysKey) -> Result<Option<Bytes>> {
        Ok(self.contents.trees.read().sys.get(&key).cloned())
    }

    fn put_sys(&self, key: SysKey, value: Option<&[u8]>) -> Result<()> {
        let mut trees = self.contents.trees.write();
        match value {
            Some(v) => {
                trees.sys.insert(key, Bytes::copy_from_slice(v));
            }
            None => {
                trees.sys.remove(&key);
            }
        }
        Ok(())
    }

    fn gc_ids(&self) -> Result<Vec<u64>> {
        Ok(self
            .contents
            .trees
            .read()
            .sys
            .keys()
            .filter_map(|k| match k {
                SysKey::Gc(id) => Some(*id),
                SysKey::Format | SysKey::State => None,
            })
            .collect())
    }

    fn flush(&self) -> Result<()> {
        // Every write is in the maps once its call returned.
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        // As durable as memory gets: nothing outlives the process.
        Ok(())
    }

    fn settle(&self) -> Result<()> {
        // A commit is never applied in part.
        Ok(())
    }

    fn read_durable(&self) -> Result<Option<DurableRecord>> {
        Ok(*self.contents.durable.lock())
    }

    fn durable_exists(&self) -> Result<bool> {
        Ok(self.read_durable()?.is_some())
    }

    fn write_durable(&self, record: &DurableRecord) -> Result<()> {
        *self.contents.durable.lock() = Some(*record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Digest;

    fn put(key: &[u8], record: &[u8], deadline: DeadlineOp) -> MetaOp {
        MetaOp::Put {
            key: Box::from(key),
            record: record.to_vec(),
            deadline,
        }
    }

    fn open(contents: &Arc<Contents>) -> Arc<dyn Storage> {
        MemoryBackend {
            contents: Arc::clone(contents),
        }
        .open()
        .unwrap()
    }

    #[test]
    fn a_commit_is_applied_whole_and_seen_whole() {
        let contents = Contents::new();
        let s = open(&contents);
        assert!(s.is_blank().unwrap());
        s.commit(Commit {
            ops: vec![
                put(b"a", b"1", DeadlineOp::Set(b"d".to_vec())),
                put(b"b", b"1", DeadlineOp::Keep),
            ],
            sys: vec![(SysKey::State, Some(b"s1".to_vec()))],
            replaced: Vec::new(),
        })
        .unwrap();
        assert!(!s.is_blank().unwrap());
        // Readers racing with commits that rewrite both keys and the state
        // record together never see a mix of two commits.
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                for _ in 0..2_000 {
                    let trees = contents.trees.read();
                    let (a, b, st) = (
                        trees.meta.get(&b"a"[..]).cloned(),
                        trees.meta.get(&b"b"[..]).cloned(),
                        trees.sys.get(&SysKey::State).cloned(),
                    );
                    drop(trees);
                    let st = st.unwrap();
                    assert_eq!(a.as_deref(), b.as_deref());
                    assert_eq!(st.get(1..), a.as_deref());
                }
            });
            for n in 2..500u32 {
                let v = n.to_string();
                s.commit(Commit {
                    ops: vec![
                        put(b"a", v.as_bytes(), DeadlineOp::Keep),
                        put(b"b", v.as_bytes(), DeadlineOp::Keep),
                    ],
                    sys: vec![(SysKey::State, Some(format!("s{v}").into_bytes()))],
                    replaced: Vec::new(),
                })
                .unwrap();
            }
            reader.join().unwrap();
        });
        s.commit(Commit {
            ops: vec![MetaOp::Remove {
                key: Box::from(&b"a"[..]),
                deadline: DeadlineOp::Clear,
            }],
            sys: vec![(SysKey::State, None)],
            replaced: Vec::new(),
        })
        .unwrap();
        assert!(s.get_meta(b"a").unwrap().is_none());
        assert!(s.scan_deadlines(b"", 10).unwrap().is_empty());
        assert!(s.get_sys(SysKey::State).unwrap().is_none());
        s.settle().unwrap();
    }

    #[test]
    fn user_records_deadlines_and_system_records_are_apart() {
        let s = open(&Contents::new());
        s.commit(Commit {
            ops: vec![
                put(b"", b"empty", DeadlineOp::Set(b"d1".to_vec())),
                put(b"\x00state", b"user", DeadlineOp::Keep),
                put(b"z", b"last", DeadlineOp::Set(b"d2".to_vec())),
            ],
            sys: vec![(SysKey::State, Some(b"sys".to_vec()))],
            replaced: Vec::new(),
        })
        .unwrap();
        assert_eq!(s.get_meta(b"\x00state").unwrap().unwrap(), &b"user"[..]);
        assert_eq!(s.get_sys(SysKey::State).unwrap().unwrap(), &b"sys"[..]);
        let keys = |page: Vec<(Bytes, Bytes)>| -> Vec<Vec<u8>> {
            page.into_iter().map(|(k, _)| k.to_vec()).collect()
        };
        assert_eq!(
            keys(s.scan_meta(b"", 10).unwrap()),
            [&b""[..], b"\x00state", b"z"]
        );
        assert_eq!(keys(s.scan_meta(b"\x00", 1).unwrap()), [&b"\x00state"[..]]);
        assert_eq!(keys(s.scan_deadlines(b"a", 10).unwrap()), [&b"z"[..]]);
        s.put_sys(SysKey::Gc(9), Some(b"y")).unwrap();
        s.put_sys(SysKey::Gc(3), Some(b"x")).unwrap();
        s.put_sys(SysKey::Format, Some(b"f")).unwrap();
        assert_eq!(s.gc_ids().unwrap(), vec![3, 9]);
        s.put_sys(SysKey::Gc(3), None).unwrap();
        assert_eq!(s.gc_ids().unwrap(), vec![9]);
    }

    #[test]
    fn blobs_are_written_read_scanned_and_removed() {
        let s = open(&Contents::new());
        assert!(s.blobs_empty().unwrap());
        for id in [1u64, 2, 300, 70_000] {
            s.put_blob(id, &id.to_le_bytes()).unwrap();
        }
        assert!(!s.blobs_empty().unwrap());
        assert_eq!(s.get_blob(300).unwrap().unwrap(), &300u64.to_le_bytes()[..]);
        assert!(s.get_blob(3).unwrap().is_none());
        let ids: Vec<BlobId> = s
            .scan_blobs(2, 2)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, [2, 300]);
        assert_eq!(s.remove_blobs_from(300).unwrap(), 2);
        assert!(s.get_blob(2).unwrap().is_some());
        assert!(s.get_blob(300).unwrap().is_none());
        s.remove_blobs(&[1, 2, 5]).unwrap();
        assert!(s.blobs_empty().unwrap());
        assert!(s.is_blank().unwrap());
        s.flush().unwrap();
        s.sync().unwrap();
    }

    #[test]
    fn the_durable_record_round_trips_and_outlives_the_storage() {
        let contents = Contents::new();
        let rec = |generation, seq| DurableRecord {
            generation,
            seq,
            digest: Digest {
                records: seq,
                sum: seq * 7,
            },
            journal: 0,
        };
        {
            let s = open(&contents);
            assert_eq!(s.read_durable().unwrap(), None);
            s.write_durable(&rec(1, 10)).unwrap();
            s.write_durable(&rec(2, 20)).unwrap();
            assert_eq!(s.read_durable().unwrap(), Some(rec(2, 20)));
        }
        assert_eq!(open(&contents).read_durable().unwrap(), Some(rec(2, 20)));
    }

    #[test]
    fn a_reopen_sees_the_same_data_and_a_second_open_is_locked() {
        let contents = Contents::new();
        let first = open(&contents);
        first
            .commit(Commit {
                ops: vec![put(b"k", b"v", DeadlineOp::Keep)],
                sys: vec![(SysKey::Format, Some(b"f".to_vec()))],
                replaced: Vec::new(),
            })
            .unwrap();
        first.put_blob(4, b"blob").unwrap();
        match MemoryStorage::open(&contents) {
            Err(Error::Locked { path }) => assert_eq!(path, contents.name()),
            Err(other) => panic!("expected Locked, got {other:?}"),
            Ok(_) => panic!("a second open of a store in use succeeded"),
        }
        assert_eq!(first.path(), contents.name());
        drop(first);
        let again = open(&contents);
        assert_eq!(again.get_meta(b"k").unwrap().unwrap(), &b"v"[..]);
        assert_eq!(again.get_blob(4).unwrap().unwrap(), &b"blob"[..]);
        assert_eq!(again.get_sys(SysKey::Format).unwrap().unwrap(), &b"f"[..]);
        // Another store is another store.
        let other = Contents::new();
        assert_ne!(other.name(), contents.name());
        assert!(open(&other).is_blank().unwrap());
    }
}
