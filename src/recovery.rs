//! What `open` does to a store before the engine serves it (and what the
//! keeper does again after replacing a failed storage).
//!
//! 1. The format record: a blank store gets one, with an empty state record
//!    (made durable by the keeper before the engine serves); a store without
//!    one, or with a foreign magic, is refused as not a millpond store; an
//!    unknown version is refused as unsupported.
//! 2. The state record: the last committed cut, the next blob id and the
//!    store digest. A version 1 state record (no digest) gets its digest
//!    from one pass over the records.
//! 3. **The durable record** (kept by the backend outside its own log): a
//!    store whose state is older than the last durable point, or blank
//!    where a store existed, or whose digest differs from the durable
//!    record's at the same seq, or whose durable record is gone or damaged,
//!    is refused with [`Error::Corrupt`] saying what was promised and what
//!    was found - unless the caller accepts the loss
//!    (`Config::accept_data_loss`), in which case the state found becomes
//!    the new baseline.
//! 4. Orphans of a cycle that never committed: every blob with an id at or
//!    above the committed next blob id is removed.
//! 5. Gc records left by cycles that committed but did not finish removing
//!    the blobs they made unreachable: the blobs are removed, then the record.
//!
//! 6. The expiry index is rebuilt from the stored deadline index
//!    ([`load_deadlines`]).
//!
//! Only step 2 of a version 1 store reads user records; otherwise open does
//! not scan the store (step 6 reads one small entry per key that has a
//! deadline). When anything changed, or the durable record does not cover
//! the state found (a killed process left flushed but unsynced cycles),
//! `Recovered::needs_sync` asks the keeper to sync and write a new durable
//! record before the engine serves.

use crate::buffer::{DirtyMap, Seq};
use crate::clock::UnixMillis;
use crate::codec::{self, Digest, DurableRecord, StateRecord, FORMAT_VERSION, MAGIC};
use crate::error::{Error, Result};
use crate::storage::{Storage, SysKey};

/// What recovery found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recovered {
    /// Sequence number of the last committed write.
    pub last_seq: Seq,
    /// The store digest of the committed state.
    pub digest: Digest,
    /// Next blob id to allocate.
    pub next_blob: u64,
    /// Next gc record id to use.
    pub next_gc_id: u64,
    /// Whether the blob tree holds any blob.
    pub blobs_exist: bool,
    /// The durable record found (`None`: none, or one that was refused and
    /// accepted as lost).
    pub durable: Option<DurableRecord>,
    /// The state found must be synced, and a durable record written for it,
    /// before the engine serves.
    pub needs_sync: bool,
}

pub(crate) fn recover(storage: &dyn Storage, accept_loss: bool) -> Result<Recovered> {
    let refuse = |what: String| -> Result<()> {
        if accept_loss {
            log::warn!("millpond: {what}; accepted (Config::accept_data_loss)");
            Ok(())
        } else {
            Err(Error::corrupt(
                None,
                format!(
                    "{what}; refusing to open it as if nothing were missing \
                     (Config::accept_data_loss opens it anyway, at the state found)"
                ),
            ))
        }
    };
    let mut durable = match storage.read_durable() {
        Ok(d) => d,
        Err(e) => {
            refuse(e.to_string())?;
            None
        }
    };
    let created = match check_format(storage)? {
        Format::Present => false,
        Format::Blank => {
            match durable {
                // The record a new store's creation writes first: a crash
                // cut the creation short, nothing was promised.
                Some(d) if d.seq == 0 && d.digest == Digest::default() => {}
                Some(d) => refuse(format!(
                    "the store's files hold no data, but its durable record promises every \
                     write up to seq {} ({})",
                    d.seq, d.digest
                ))?,
                None if storage.durable_exists()? => refuse(
                    "the store's files hold no data, but its durable record file exists \
                     (a store was created here)"
                        .into(),
                )?,
                None => {}
            }
            // A new store: its durable record comes first, so that a store
            // whose files hold a format record always has one (a store
            // without it is damaged, never a creation cut short).
            let first = DurableRecord {
                generation: durable.map_or(1, |d| d.generation + 1),
                seq: 0,
                digest: Digest::default(),
                journal: 0,
            };
            storage.write_durable(&first)?;
            durable = Some(first);
            let empty = StateRecord {
                digest: Some(Digest::default()),
                ..StateRecord::default()
            };
            storage.put_sys(SysKey::Format, Some(&codec::encode_format()?))?;
            storage.put_sys(SysKey::State, Some(&codec::encode_state(&empty)?))?;
            true
        }
    };
    let stored = storage.get_sys(SysKey::State)?;
    let mut changed = false;
    let mut state = match &stored {
        Some(raw) => match codec::decode_state(raw) {
            Ok(state) => state,
            Err(e) => {
                refuse(format!("the store's state record is damaged ({e})"))?;
                // Accepted: rebuild it from what the store holds.
                changed = true;
                rebuild_state(storage)?
            }
        },
        // Created by a version that wrote no state record before the first
        // cycle: nothing was ever committed.
        None => StateRecord {
            digest: Some(Digest::default()),
            ..StateRecord::default()
        },
    };
    if changed {
        storage.put_sys(SysKey::State, Some(&codec::encode_state(&state)?))?;
    }
    let had_digest = state.digest.is_some() && stored.is_some();
    let digest = match state.digest {
        Some(d) => d,
        None => {
            let d = digest_of_records(storage)?;
            state.digest = Some(d);
            storage.put_sys(SysKey::State, Some(&codec::encode_state(&state)?))?;
            changed = true;
            d
        }
    };

    match durable {
        None if had_digest => refuse(format!(
            "the store's durable record is missing, and its files hold writes up to seq {} ({})",
            state.last_seq, digest
        ))?,
        None => {}
        Some(d) if state.last_seq < d.seq => refuse(format!(
            "the store came back older than its last durable point: writes up to seq {} ({}) \
             were made durable, the store's files hold writes up to seq {} ({})",
            d.seq, d.digest, state.last_seq, digest
        ))?,
        Some(d) if state.last_seq == d.seq && digest != d.digest => refuse(format!(
            "the store's records differ from what its last durable point recorded at seq {}: \
             {} promised, {} found",
            d.seq, d.digest, digest
        ))?,
        Some(_) => {}
    }

    changed |= storage.remove_blobs_from(state.next_blob)? > 0;
    let gc_ids = storage.gc_ids()?;
    for &id in &gc_ids {
        let Some(raw) = storage.get_sys(SysKey::Gc(id))? else {
            continue;
        };
        match codec::decode_gc(&raw) {
            Ok(gc) => {
                storage.remove_blobs(&gc.blobs)?;
                storage.put_sys(SysKey::Gc(id), None)?;
                changed = true;
            }
            // The blobs it lists cannot be known; leave the record for
            // `verify` to report.
            Err(e) => log::warn!("millpond: unreadable gc record {id} left in place: {e}"),
        }
    }
    let covered = durable.is_some_and(|d| d.seq == state.last_seq && d.digest == digest);
    Ok(Recovered {
        last_seq: Seq(state.last_seq),
        digest,
        next_blob: state.next_blob,
        next_gc_id: gc_ids.last().map_or(0, |id| id + 1),
        blobs_exist: !storage.blobs_empty()?,
        durable,
        needs_sync: created || changed || !covered,
    })
}

/// A state record rebuilt from the records and blobs (when the stored one is
/// damaged and the loss is accepted): the highest seq of any record, the
/// blob id after the highest blob, the digest of the records.
fn rebuild_state(storage: &dyn Storage) -> Result<StateRecord> {
    const PAGE: usize = 4096;
    let mut last_seq = 0;
    let mut from: Vec<u8> = Vec::new();
    loop {
        let page = storage.scan_meta(&from, PAGE)?;
        for (key, raw) in &page {
            if let Ok(rec) = codec::decode_meta(key, raw) {
                last_seq = last_seq.max(rec.seq);
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => {
                from = last.to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    let mut next_blob = 0;
    loop {
        let page = storage.scan_blobs(next_blob, PAGE)?;
        match page.last() {
            Some((id, _)) => next_blob = id.saturating_add(1),
            None => break,
        }
        if page.len() < PAGE {
            break;
        }
    }
    Ok(StateRecord {
        last_seq,
        next_blob,
        digest: Some(digest_of_records(storage)?),
    })
}

/// The store digest of every user record, from one pass over them.
pub(crate) fn digest_of_records(storage: &dyn Storage) -> Result<Digest> {
    const PAGE: usize = 4096;
    let mut digest = Digest::default();
    let mut from: Vec<u8> = Vec::new();
    loop {
        let page = storage.scan_meta(&from, PAGE)?;
        for (key, raw) in &page {
            digest.add(key, raw);
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => {
                from = last.to_vec();
                from.push(0);
            }
            _ => return Ok(digest),
        }
    }
}

enum Format {
    Present,
    Blank,
}

/// Checks the format record; a blank store has none (the caller writes it).
fn check_format(storage: &dyn Storage) -> Result<Format> {
    match storage.get_sys(SysKey::Format)? {
        Some(raw) => {
            let format = codec::decode_format(&raw)?;
            if format.magic != MAGIC {
                return Err(Error::NotAStore {
                    path: storage.path(),
                    reason: "its format record has a foreign marker".into(),
                });
            }
            if !(FORMAT_VERSION..=codec::FORMAT_VERSION_COMPRESSION).contains(&format.version) {
                return Err(Error::UnsupportedFormat {
                    found: format.version,
                    supported: codec::FORMAT_VERSION_COMPRESSION,
                });
            }
            Ok(Format::Present)
        }
        None if storage.is_blank()? => Ok(Format::Blank),
        None => Err(Error::NotAStore {
            path: storage.path(),
            reason: "it holds a database without a millpond format record".into(),
        }),
    }
}

/// Rebuilds the expiry index from the stored deadline index: one entry per
/// key with a deadline, nothing marked dirty. Reads only keys with a
/// deadline, never values. An unreadable deadline entry falls back to the
/// deadline in the key's metadata record.
pub(crate) fn load_deadlines(storage: &dyn Storage, buffer: &DirtyMap) -> Result<usize> {
    const PAGE: usize = 10_000;
    let mut from: Vec<u8> = Vec::new();
    let mut loaded = 0;
    loop {
        let page = storage.scan_deadlines(&from, PAGE)?;
        let full = page.len() == PAGE;
        for (key, raw) in &page {
            let deadline = match codec::decode_deadline(key, raw) {
                Ok(d) => Some(d),
                Err(e) => {
                    log::warn!("millpond: {e}; using the deadline in its record");
                    match storage.get_meta(key)? {
                        Some(rec) => codec::decode_meta(key, &rec).ok().and_then(|r| r.deadline),
                        None => None,
                    }
                }
            };
            if let Some(d) = deadline {
                buffer.index_stored_deadline(key, UnixMillis(d));
                loaded += 1;
            }
        }
        match page.last() {
            Some((last, _)) if full => {
                // The next key after `last`.
                from = last.to_vec();
                from.push(0);
            }
            _ => return Ok(loaded),
        }
    }
}
