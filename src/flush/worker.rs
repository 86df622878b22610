//! Flush workers: the parallel part of a flush cycle.
//!
//! Each worker takes every `parts`-th frozen shard and, for each entry:
//! 1. writes the value to the blob tree under a new blob id if it is longer
//!    than the inline threshold (nothing points at it yet);
//! 2. reads the key's current record: the blob it points at, if any, is
//!    superseded by the new record, and the record leaves the store digest;
//! 3. encodes the new metadata record (or a removal, for a tombstone), which
//!    enters the store digest.
//!
//! Nothing a worker does is visible to readers: the records it encodes are
//! applied later, atomically, by the coordinator.

use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::buffer::{Entry, Frozen, Slot};
use crate::codec::{self, BlobRef, DigestDelta, MetaRecord, ValueRef};
use crate::config::Compression;
use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::stats::Counters;
use crate::storage::{BlobId, DeadlineOp, MetaOp, Storage};

/// What one worker produced for its share of a cycle.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    pub ops: Vec<MetaOp>,
    /// For each of `ops`, the record its key held when it was prepared.
    pub replaced: Vec<Option<Bytes>>,
    /// Blobs written (or attempted): orphans unless the cycle commits.
    pub written: Vec<BlobId>,
    /// Blobs the new records make unreachable.
    pub superseded: Vec<BlobId>,
    /// What the new records change in the store digest.
    pub digest: DigestDelta,
    /// Whether a new record points at a compressed blob (the cycle raises
    /// the format version before it commits one).
    pub compressed: bool,
    /// The first error met; the share is then incomplete.
    pub error: Option<Error>,
}

struct Job {
    frozen: Arc<Frozen>,
    part: usize,
    parts: usize,
    reply: Sender<Prepared>,
}

/// Hands the shares of a cycle to the worker threads.
pub(crate) struct Pool {
    jobs: Sender<Job>,
    parts: usize,
}

impl Pool {
    pub(crate) fn start(shared: &Arc<Shared>) -> Result<(Pool, Vec<JoinHandle<()>>)> {
        let parts = shared.config.flush_threads;
        let (jobs, rx) = unbounded::<Job>();
        let mut handles = Vec::with_capacity(parts);
        for i in 0..parts {
            let rx: Receiver<Job> = rx.clone();
            let s = Arc::clone(shared);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("millpond-flush-worker-{i}"))
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            let out = prepare(&s, &job.frozen, job.part, job.parts);
                            let _ = job.reply.send(out);
                        }
                    })?,
            );
        }
        Ok((Pool { jobs, parts }, handles))
    }

    /// Prepares every share of `frozen` in parallel and returns the results.
    pub(crate) fn prepare(&self, frozen: &Arc<Frozen>) -> Vec<Prepared> {
        let (reply, results) = bounded(self.parts);
        let mut sent = 0;
        for part in 0..self.parts {
            let job = Job {
                frozen: Arc::clone(frozen),
                part,
                parts: self.parts,
                reply: reply.clone(),
            };
            if self.jobs.send(job).is_ok() {
                sent += 1;
            }
        }
        drop(reply);
        let mut out: Vec<Prepared> = results.iter().take(sent).collect();
        if out.len() < self.parts {
            out.push(Prepared {
                error: Some(Error::Storage("a flush worker stopped".into())),
                ..Prepared::default()
            });
        }
        out
    }
}

/// Prepares shard `part`, `part + parts`, ... of `frozen`.
pub(crate) fn prepare(shared: &Shared, frozen: &Frozen, part: usize, parts: usize) -> Prepared {
    let mut out = Prepared::default();
    let storage = match shared.storage() {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let shards = frozen.shards.iter().skip(part).step_by(parts).flatten();
    for shard in shards {
        if let Err(e) = prepare_shard(shared, &*storage, &shard.entries, &mut out) {
            out.error = Some(e);
            return out;
        }
    }
    out
}

/// One frozen shard: the records its keys hold now, read together; the
/// entries prepared; their new blobs written together.
fn prepare_shard(
    shared: &Shared,
    storage: &dyn Storage,
    entries: &std::collections::HashMap<crate::buffer::dirty::Key, Entry>,
    out: &mut Prepared,
) -> Result<()> {
    let entries: Vec<(&[u8], &Entry)> = entries.iter().map(|(k, e)| (&k[..], e)).collect();
    let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| *k).collect();
    let olds = storage.get_metas(&keys)?;
    if olds.len() != entries.len() {
        return Err(Error::Storage(format!(
            "{} records read back for {} keys",
            olds.len(),
            entries.len()
        )));
    }
    let mut blobs = Vec::new();
    for ((key, entry), old) in entries.into_iter().zip(olds) {
        prepare_entry(shared, key, entry, old, &mut blobs, out)?;
    }
    if !blobs.is_empty() {
        // Listed first: an error may leave any of them written.
        out.written.extend(blobs.iter().map(|(id, _)| *id));
        storage.put_blobs(&blobs)?;
        Counters::add(&shared.counters.blobs_written, blobs.len() as u64);
    }
    Ok(())
}

/// One entry: its op, the record it replaces, its digest change; a long
/// value gets a fresh blob id and goes to `blobs` (written by the caller).
fn prepare_entry(
    shared: &Shared,
    key: &[u8],
    entry: &Entry,
    old: Option<Bytes>,
    blobs: &mut Vec<(BlobId, Bytes)>,
    out: &mut Prepared,
) -> Result<()> {
    let old_blob = old.as_deref().and_then(|raw| stored_blob(key, raw));
    let deadline = match (entry.deadline, entry.rewrite_deadline) {
        (Some(d), _) => DeadlineOp::Set(codec::encode_deadline(d.0)?),
        (None, true) => DeadlineOp::Clear,
        // On a store other engines write, this engine's expiry index may
        // not know the deadline another engine stored: the record replaced
        // says (an unreadable one is cleared after, which is harmless).
        (None, false)
            if !shared.keeper.exclusive()
                && old.as_deref().is_some_and(|raw| {
                    codec::decode_meta(key, raw).map_or(true, |r| r.deadline.is_some())
                }) =>
        {
            DeadlineOp::Clear
        }
        (None, false) => DeadlineOp::Keep,
    };
    let value = match &entry.slot {
        Slot::Value(v) if v.len() <= shared.config.inline_threshold => ValueRef::Inline(v),
        Slot::Value(v) => {
            let id = shared.keeper.blobs().allocate();
            let (blob, stored) = match shared.config.compression {
                Compression::Lz4 => BlobRef::compress(id, v),
                Compression::None => (BlobRef::for_value(id, v), v.clone()),
            };
            blobs.push((id, stored));
            out.compressed |= blob.compressed.is_some();
            ValueRef::Blob(blob)
        }
        // A metadata-only change: the record points at the stored blob.
        Slot::Blob(b) => {
            out.compressed |= b.compressed.is_some();
            ValueRef::Blob(*b)
        }
        Slot::Tombstone => {
            out.ops.push(MetaOp::Remove {
                key: Box::from(key),
                deadline,
            });
            if let Some(old) = &old {
                out.digest.remove(key, old);
            }
            out.replaced.push(old);
            if let Some(old) = old_blob {
                out.superseded.push(old);
            }
            return Ok(());
        }
    };
    let record = codec::encode_meta(&MetaRecord {
        seq: entry.seq.0,
        deadline: entry.deadline.map(|d| d.0),
        value,
    })?;
    out.digest.put(key, old.as_deref(), &record);
    out.ops.push(MetaOp::Put {
        key: Box::from(key),
        record,
        deadline,
    });
    out.replaced.push(old);
    let new_blob = match value {
        ValueRef::Blob(b) => Some(b.id),
        ValueRef::Inline(_) => None,
    };
    if let Some(old) = old_blob {
        if Some(old) != new_blob {
            out.superseded.push(old);
        }
    }
    Ok(())
}

/// The blob a committed record of `key` points at. A record that does not
/// decode is left alone (its blob, if any, stays until `verify` finds it).
fn stored_blob(key: &[u8], raw: &[u8]) -> Option<BlobId> {
    match codec::decode_meta(key, raw) {
        Ok(MetaRecord {
            value: ValueRef::Blob(b),
            ..
        }) => Some(b.id),
        Ok(_) => None,
        Err(e) => {
            log::warn!("millpond: replacing an unreadable record: {e}");
            None
        }
    }
}
