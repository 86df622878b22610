//! [`FaultyStorage`]: a [`Storage`] wrapper that fails chosen calls, driven by
//! a shared [`Faults`] plan. Inserted only when `Config::faults` is set (by
//! tests); costs nothing otherwise.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{BlobId, Commit, Storage, SysKey};
use crate::codec::DurableRecord;
use crate::error::{Error, Result};

/// A kind of storage call that a fault plan can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageOp {
    /// Writing a value to the blob tree.
    PutBlob,
    /// The atomic commit of a flush cycle's records.
    Commit,
    /// Removing unreachable blobs.
    RemoveBlobs,
    /// Handing writes to the operating system.
    Flush,
    /// Making writes durable (fsync).
    Sync,
    /// Reading a metadata record.
    GetMeta,
    /// Reading a blob.
    GetBlob,
}

/// A plan of storage failures, shared between a test and an engine opened
/// with `Config::faults`. Every injected failure is an `Error::Io`.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Calls seen, per kind.
    calls: HashMap<StorageOp, u64>,
    /// Fail the call of this kind whose count reaches this number.
    nth: HashMap<StorageOp, u64>,
    /// Fail every call of these kinds until cleared.
    all: HashSet<StorageOp>,
    injected: u64,
}

impl Faults {
    /// An empty plan (nothing fails).
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// Makes the `n`-th call of `op` from now fail (1: the next one).
    pub fn fail_nth(&self, op: StorageOp, n: u64) {
        let mut s = self.state.lock();
        let seen = s.calls.get(&op).copied().unwrap_or(0);
        s.nth.insert(op, seen + n.max(1));
    }

    /// Makes every call of `op` fail until [`Faults::clear`].
    pub fn fail_all(&self, op: StorageOp) {
        self.state.lock().all.insert(op);
    }

    /// Stops every failure.
    pub fn clear(&self) {
        let mut s = self.state.lock();
        s.nth.clear();
        s.all.clear();
    }

    /// Calls of `op` seen so far.
    pub fn calls(&self, op: StorageOp) -> u64 {
        self.state.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// Failures injected so far.
    pub fn injected(&self) -> u64 {
        self.state.lock().injected
    }

    fn check(&self, op: StorageOp) -> Result<()> {
        let mut s = self.state.lock();
        let n = {
            let c = s.calls.entry(op).or_insert(0);
            *c += 1;
            *c
        };
        let fail = s.all.contains(&op) || s.nth.get(&op) == Some(&n);
        if fail {
            s.injected += 1;
            return Err(Error::Io(std::io::Error::other(format!(
                "injected fault: {op:?} call {n}"
            ))));
        }
        Ok(())
    }
}

/// The wrapper.
pub(crate) struct FaultyStorage {
    inner: Arc<dyn Storage>,
    faults: Arc<Faults>,
}

impl FaultyStorage {
    pub(crate) fn new(inner: Arc<dyn Storage>, faults: Arc<Faults>) -> FaultyStorage {
        FaultyStorage { inner, faults }
    }
}

impl Storage for FaultyStorage {
    fn get_meta(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.faults.check(StorageOp::GetMeta)?;
        self.inner.get_meta(key)
    }

    fn scan_meta(&self, from: &[u8], limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        self.faults.check(StorageOp::GetMeta)?;
        self.inner.scan_meta(from, limit)
    }

    fn scan_meta_rev(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        self.faults.check(StorageOp::GetMeta)?;
        self.inner.scan_meta_rev(from, to, limit)
    }

    fn scan_deadlines(&self, from: &[u8], limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        self.inner.scan_deadlines(from, limit)
    }

    fn scan_blobs(&self, from: BlobId, limit: usize) -> Result<Vec<(BlobId, Bytes)>> {
        self.faults.check(StorageOp::GetBlob)?;
        self.inner.scan_blobs(from, limit)
    }

    fn get_blob(&self, id: BlobId) -> Result<Option<Bytes>> {
        self.faults.check(StorageOp::GetBlob)?;
        self.inner.get_blob(id)
    }

    fn put_blob(&self, id: BlobId, value: &[u8]) -> Result<()> {
        self.faults.check(StorageOp::PutBlob)?;
        self.inner.put_blob(id, value)
    }

    fn remove_blobs(&self, ids: &[BlobId]) -> Result<()> {
        self.faults.check(StorageOp::RemoveBlobs)?;
        self.inner.remove_blobs(ids)
    }

    fn remove_blobs_from(&self, first: BlobId) -> Result<usize> {
        self.inner.remove_blobs_from(first)
    }

    fn path(&self) -> std::path::PathBuf {
        self.inner.path()
    }

    fn is_blank(&self) -> Result<bool> {
        self.inner.is_blank()
    }

    fn blobs_empty(&self) -> Result<bool> {
        self.inner.blobs_empty()
    }

    fn commit(&self, commit: Commit) -> Result<()> {
        self.faults.check(StorageOp::Commit)?;
        self.inner.commit(commit)
    }

    fn get_sys(&self, key: SysKey) -> Result<Option<Bytes>> {
        self.inner.get_sys(key)
    }

    fn put_sys(&self, key: SysKey, value: Option<&[u8]>) -> Result<()> {
        self.inner.put_sys(key, value)
    }

    fn gc_ids(&self) -> Result<Vec<u64>> {
        self.inner.gc_ids()
    }

    fn flush(&self) -> Result<()> {
        self.faults.check(StorageOp::Flush)?;
        self.inner.flush()
    }

    fn sync(&self) -> Result<()> {
        // Like a real fsync failure: the writes reached the kernel, but
        // whether they reached the disk is unknown.
        self.inner.flush()?;
        self.faults.check(StorageOp::Sync)?;
        self.inner.sync()
    }

    fn settle(&self) -> Result<()> {
        self.inner.settle()
    }

    fn read_durable(&self) -> Result<Option<DurableRecord>> {
        self.inner.read_durable()
    }

    fn durable_exists(&self) -> Result<bool> {
        self.inner.durable_exists()
    }

    fn write_durable(&self, record: &DurableRecord) -> Result<()> {
        self.inner.write_durable(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_the_nth_call_and_all_calls() {
        let f = Faults::new();
        f.check(StorageOp::Commit).unwrap();
        f.fail_nth(StorageOp::Commit, 2);
        f.check(StorageOp::Commit).unwrap();
        assert!(f.check(StorageOp::Commit).is_err());
        f.check(StorageOp::Commit).unwrap();
        f.fail_all(StorageOp::Flush);
        assert!(f.check(StorageOp::Flush).is_err());
        assert!(f.check(StorageOp::Flush).is_err());
        f.clear();
        f.check(StorageOp::Flush).unwrap();
        assert_eq!((f.calls(StorageOp::Commit), f.injected()), (4, 3));
    }
}
