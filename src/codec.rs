//! Versioned, checksummed encoding of everything millpond stores in the
//! metadata tree (serde + postcard).
//!
//! Every record is framed the same way:
//!
//! ```text
//! [tag: u8][postcard body][crc32 (little endian) of tag and body: 4 bytes]
//! ```
//!
//! The tag names the record kind and its version, so a later format can add a
//! kind or a version beside the old one. Decoding never panics: a short
//! record, a checksum mismatch, an unknown tag or a body that does not decode
//! (or leaves bytes over) is an [`Error::Corrupt`].

use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{Error, Result};

/// The on-disk format version of a store without trees; this build reads it
/// and writes it for a new store.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The format version of a store that has (or had) a tree: written when the
/// first tree is opened, so that a build that knows no trees refuses the
/// store instead of missing their records. This build reads both.
pub(crate) const FORMAT_VERSION_TREES: u32 = 2;
/// The format version of a sled store that may hold a long value in parts
/// (blob keys `id ++ part`, see `storage::sled::BLOB_PART`): written before
/// the first part, so that a build that knows no parts refuses the store
/// instead of reporting its long values missing. Such a store may hold
/// trees too.
pub(crate) const FORMAT_VERSION_PARTS: u32 = 3;
/// The format version of a store that may hold a value compressed (a
/// record's `CompressedBlob`, see [`BlobRef::compressed`]): written before
/// the first such record is committed, so that a build that knows no
/// compression refuses the store instead of reporting its records corrupt.
/// Such a store may hold trees and parts too. This build reads versions 1
/// to 4.
pub(crate) const FORMAT_VERSION_COMPRESSION: u32 = 4;

/// First bytes of the format record: marks a directory as a millpond store.
pub(crate) const MAGIC: [u8; 8] = *b"millpond";

/// Record tags (kind and version).
const TAG_META_V1: u8 = 0x01;
const TAG_FORMAT: u8 = 0x10;
const TAG_STATE_V1: u8 = 0x11;
const TAG_GC_V1: u8 = 0x12;
const TAG_DEADLINE_V1: u8 = 0x13;
const TAG_COMMIT_LOG_V1: u8 = 0x14;
const TAG_STATE_V2: u8 = 0x15;
const TAG_UNDO_LOG_V1: u8 = 0x16;

const CRC_LEN: usize = 4;

/// Where a stored value lives.
///
/// On disk (see [`Wire`]) a blob whose value is kept compressed is a third
/// variant, `CompressedBlob`, appended after the two of format version 1, so
/// records of uncompressed values encode exactly as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueRef<'a> {
    /// Inside the metadata record itself (values up to `inline_threshold`).
    Inline(&'a [u8]),
    /// In the blob tree, under `id`.
    Blob(BlobRef),
}

/// A pointer from a metadata record to a value in the blob tree, with what is
/// needed to check the value when it is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobRef {
    /// Key of the value in the blob tree. Unique for the life of the store.
    pub id: u64,
    /// Length of the value.
    pub len: u64,
    /// CRC-32 of the value.
    pub crc: u32,
    /// `Some(n)`: the blob tree holds the value compressed, LZ4 block format
    /// (`lz4_flex`), in `n` bytes. `len` and `crc` are the value's.
    pub compressed: Option<u64>,
}

/// A compressed value must save at least this share of its length (one
/// eighth), else it is stored as it is: the blob tree then holds what the
/// reader returns, with no decompression on each read of a value that
/// hardly shrinks.
const MIN_SAVING_SHIFT: u32 = 3;

/// Only the first this many bytes of a value are compressed as a trial
/// before the whole: values that do not compress (random bytes, media,
/// values compressed already) cost a fifth of a full attempt.
const PROBE: usize = 1024;

/// More than LZ4's largest expansion of a block (255 bytes out per byte in).
const LZ4_MAX_RATIO: usize = 256;

impl BlobRef {
    /// The pointer to `value`, stored as it is under `id`.
    pub(crate) fn for_value(id: u64, value: &[u8]) -> BlobRef {
        BlobRef {
            id,
            len: value.len() as u64,
            crc: crc32fast::hash(value),
            compressed: None,
        }
    }

    /// The pointer to `value` under `id` and what the blob tree is to hold:
    /// `value` compressed if that saves at least an eighth of it (and of its
    /// first KiB, tried first), else `value` itself.
    pub(crate) fn compress(id: u64, value: &Bytes) -> (BlobRef, Bytes) {
        let plain = || (BlobRef::for_value(id, value), value.clone());
        let saves = |from: usize, to: usize| to <= from - (from >> MIN_SAVING_SHIFT);
        if value.len() > 2 * PROBE {
            let probe = &value[..PROBE];
            if !saves(probe.len(), lz4_flex::block::compress(probe).len()) {
                return plain();
            }
        }
        let mut packed = lz4_flex::block::compress(value);
        if !saves(value.len(), packed.len()) {
            return plain();
        }
        // `compress` allocates for the worst case: held until the blob is
        // written, outside `max_dirty_bytes`, so cut to what it holds.
        packed.shrink_to_fit();
        let blob = BlobRef {
            compressed: Some(packed.len() as u64),
            ..BlobRef::for_value(id, value)
        };
        (blob, Bytes::from(packed))
    }

    /// The value, from what the blob tree holds for this pointer: checked
    /// against length and checksum, decompressed first if it is stored
    /// compressed. Damage of any kind is [`Error::Corrupt`], never a panic.
    pub(crate) fn value(&self, key: &[u8], stored: Bytes) -> Result<Bytes> {
        let value = match self.compressed {
            None => stored,
            Some(n) => {
                if stored.len() as u64 != n {
                    return Err(Error::corrupt(
                        Some(key),
                        format!(
                            "blob {} is {} bytes, its record says {n} compressed",
                            self.id,
                            stored.len()
                        ),
                    ));
                }
                // LZ4 expands at most 255-fold: a length past that is
                // damage, and must not become an allocation that aborts.
                let len = usize::try_from(self.len)
                    .ok()
                    .filter(|&len| len <= stored.len().saturating_mul(LZ4_MAX_RATIO))
                    .ok_or_else(|| {
                        Error::corrupt(
                            Some(key),
                            format!(
                                "blob {} claims {} bytes from {} compressed",
                                self.id,
                                self.len,
                                stored.len()
                            ),
                        )
                    })?;
                match lz4_flex::block::decompress(&stored, len) {
                    Ok(v) => Bytes::from(v),
                    Err(e) => {
                        return Err(Error::corrupt(
                            Some(key),
                            format!("blob {} does not decompress: {e}", self.id),
                        ))
                    }
                }
            }
        };
        if value.len() as u64 != self.len {
            return Err(Error::corrupt(
                Some(key),
                format!(
                    "blob {} is {} bytes, its record says {}",
                    self.id,
                    value.len(),
                    self.len
                ),
            ));
        }
        if crc32fast::hash(&value) != self.crc {
            return Err(Error::corrupt(
                Some(key),
                format!("blob {} fails its checksum", self.id),
            ));
        }
        Ok(value)
    }
}

/// How a [`ValueRef`] is encoded: the variants in their on-disk order.
#[derive(Serialize, Deserialize)]
enum Wire<'a> {
    Inline(#[serde(borrow, serialize_with = "bytes")] &'a [u8]),
    Blob(WireBlob),
    /// Format version 4: the blob and its compressed length.
    CompressedBlob(WireBlob, u64),
}

#[derive(Serialize, Deserialize)]
struct WireBlob {
    id: u64,
    len: u64,
    crc: u32,
}

impl Serialize for ValueRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match *self {
            ValueRef::Inline(v) => Wire::Inline(v),
            ValueRef::Blob(b) => {
                let w = WireBlob {
                    id: b.id,
                    len: b.len,
                    crc: b.crc,
                };
                match b.compressed {
                    None => Wire::Blob(w),
                    Some(n) => Wire::CompressedBlob(w, n),
                }
            }
        }
        .serialize(s)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ValueRef<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let blob = |w: WireBlob, compressed| BlobRef {
            id: w.id,
            len: w.len,
            crc: w.crc,
            compressed,
        };
        Ok(match Wire::deserialize(d)? {
            Wire::Inline(v) => ValueRef::Inline(v),
            Wire::Blob(w) => ValueRef::Blob(blob(w, None)),
            Wire::CompressedBlob(w, n) => ValueRef::Blob(blob(w, Some(n))),
        })
    }
}

/// The metadata record of one user key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetaRecord<'a> {
    /// Sequence number of the write that produced this record.
    pub seq: u64,
    /// Expiry deadline, in milliseconds since the Unix epoch.
    pub deadline: Option<u64>,
    /// The value, inline or by reference.
    #[serde(borrow)]
    pub value: ValueRef<'a>,
}

/// Marks a directory as a millpond store and names its format version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FormatRecord {
    pub magic: [u8; 8],
    pub version: u32,
}

/// Engine state committed with every flush cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StateRecord {
    /// Highest write sequence number included in the committed state.
    pub last_seq: u64,
    /// Every blob id below this was allocated by a committed cycle (or by an
    /// attempt whose blobs a gc record lists); ids from here up are orphans
    /// of a cycle that never committed.
    pub next_blob: u64,
    /// The digest of every user record committed with this state; `None` in
    /// a version 1 record (written before digests existed).
    pub digest: Option<Digest>,
}

/// Body of a version 1 state record (tag `0x11`).
#[derive(Serialize, Deserialize)]
struct StateV1 {
    last_seq: u64,
    next_blob: u64,
}

/// Body of a version 2 state record (tag `0x15`).
#[derive(Serialize, Deserialize)]
struct StateV2 {
    last_seq: u64,
    next_blob: u64,
    digest: Digest,
}

/// The **store digest**: a summary of every user record in the metadata
/// tree, cheap to keep up to date per commit and independent of order: the
/// number of records and the wrapping sum of a 64-bit hash of each (key and
/// record bytes). A commit adds the hash of each record it writes and
/// subtracts the hash of the record it replaces or removes.
///
/// Two sets of records with the same digest are, in practice, the same set:
/// a lost, added, rolled back or changed record moves the sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Digest {
    pub records: u64,
    pub sum: u64,
}

impl Digest {
    /// The hash of one stored record (`key` is its internal key). A record
    /// of the default keyspace is hashed with its user key (the internal key
    /// without its tag), as format version 1 did; a tree's with its whole
    /// internal key.
    pub(crate) fn hash(key: &[u8], record: &[u8]) -> u64 {
        let key = match key.split_first() {
            Some((&crate::tree::DEFAULT_TAG, user)) => user,
            _ => key,
        };
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key);
        h.update(record);
        h.digest()
    }

    /// Counts one more record.
    pub(crate) fn add(&mut self, key: &[u8], record: &[u8]) {
        self.records = self.records.wrapping_add(1);
        self.sum = self.sum.wrapping_add(Digest::hash(key, record));
    }

    /// Counts one record less.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, key: &[u8], record: &[u8]) {
        self.records = self.records.wrapping_sub(1);
        self.sum = self.sum.wrapping_sub(Digest::hash(key, record));
    }

    /// The digest after applying `delta` (a [`DigestDelta`]).
    pub(crate) fn apply(self, delta: DigestDelta) -> Digest {
        Digest {
            records: self.records.wrapping_add(delta.records as u64),
            sum: self.sum.wrapping_add(delta.sum),
        }
    }
}

/// A change to a [`Digest`], as a commit computes it: records added minus
/// records removed, and the wrapping sum of the hashes added minus removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DigestDelta {
    pub records: i64,
    pub sum: u64,
}

impl DigestDelta {
    /// A record stored under `key` (replacing `old`, if there was one).
    pub(crate) fn put(&mut self, key: &[u8], old: Option<&[u8]>, new: &[u8]) {
        if let Some(old) = old {
            self.remove(key, old);
        }
        self.records += 1;
        self.sum = self.sum.wrapping_add(Digest::hash(key, new));
    }

    /// The record `old` of `key` removed.
    pub(crate) fn remove(&mut self, key: &[u8], old: &[u8]) {
        self.records -= 1;
        self.sum = self.sum.wrapping_sub(Digest::hash(key, old));
    }

    pub(crate) fn merge(&mut self, other: DigestDelta) {
        self.records += other.records;
        self.sum = self.sum.wrapping_add(other.sum);
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} records, digest {:016x}", self.records, self.sum)
    }
}

/// Blobs that a committed cycle made unreachable, to be removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GcRecord {
    pub blobs: Vec<u64>,
}

/// Serializes a byte string as one run of bytes. postcard writes a
/// sequence of `u8` (serde's default for `&[u8]`) the same way, a length
/// then the bytes, but element by element: this is the same encoding
/// without a call per byte (unit test `byte_fields_encode_as_before`).
fn bytes<S: Serializer>(v: &&[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    Run(v).serialize(s)
}

/// [`bytes`] for an optional byte string.
fn optional_bytes<S: Serializer>(v: &Option<&[u8]>, s: S) -> std::result::Result<S::Ok, S::Error> {
    v.map(Run).serialize(s)
}

/// A byte string serialized as one run of bytes.
struct Run<'a>(&'a [u8]);

impl Serialize for Run<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Encodes `body` framed under `tag`; `hint` is roughly how many bytes the
/// body takes (the buffer is made that big at once).
fn frame_sized<T: Serialize>(tag: u8, body: &T, hint: usize) -> Result<Vec<u8>> {
    let mut start = Vec::with_capacity(hint + 1 + 16 + CRC_LEN);
    start.push(tag);
    // postcard fails only on shapes these records do not have, or when its
    // writer fails (a Vec never does); the error is still passed on.
    let mut out = postcard::to_extend(body, start)
        .map_err(|e| Error::Encode(format!("record does not encode: {e}")))?;
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn frame<T: Serialize>(tag: u8, body: &T) -> Result<Vec<u8>> {
    frame_sized(tag, body, 0)
}

/// Checks frame and checksum; returns the tag and the body.
fn unframe<'a>(key: Option<&[u8]>, raw: &'a [u8]) -> Result<(u8, &'a [u8])> {
    if raw.len() < 1 + CRC_LEN {
        return Err(Error::corrupt(
            key,
            format!("record is {} bytes, too short", raw.len()),
        ));
    }
    let (framed, crc) = raw.split_at(raw.len() - CRC_LEN);
    let mut crc_bytes = [0u8; CRC_LEN];
    crc_bytes.copy_from_slice(crc);
    if crc32fast::hash(framed) != u32::from_le_bytes(crc_bytes) {
        return Err(Error::corrupt(key, "record fails its checksum"));
    }
    Ok((framed[0], &framed[1..]))
}

fn body<'a, T: Deserialize<'a>>(key: Option<&[u8]>, what: &str, bytes: &'a [u8]) -> Result<T> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(Error::corrupt(
            key,
            format!("{what} has {} trailing bytes", rest.len()),
        )),
        Err(e) => Err(Error::corrupt(key, format!("{what} does not decode: {e}"))),
    }
}

fn expect_tag(key: Option<&[u8]>, what: &str, found: u8, want: u8) -> Result<()> {
    if found == want {
        Ok(())
    } else {
        Err(Error::corrupt(
            key,
            format!("{what} has tag {found:#04x}, expected {want:#04x}"),
        ))
    }
}

pub(crate) fn encode_meta(rec: &MetaRecord<'_>) -> Result<Vec<u8>> {
    let hint = match rec.value {
        ValueRef::Inline(v) => v.len() + 32,
        ValueRef::Blob(_) => 48,
    };
    frame_sized(TAG_META_V1, rec, hint)
}

/// Decodes the metadata record stored for `key`. Inline values borrow from
/// `raw`.
pub(crate) fn decode_meta<'a>(key: &[u8], raw: &'a [u8]) -> Result<MetaRecord<'a>> {
    let (tag, bytes) = unframe(Some(key), raw)?;
    expect_tag(Some(key), "metadata record", tag, TAG_META_V1)?;
    body(Some(key), "metadata record", bytes)
}

pub(crate) fn encode_format() -> Result<Vec<u8>> {
    encode_format_version(FORMAT_VERSION)
}

pub(crate) fn encode_format_version(version: u32) -> Result<Vec<u8>> {
    frame(
        TAG_FORMAT,
        &FormatRecord {
            magic: MAGIC,
            version,
        },
    )
}

pub(crate) fn decode_format(raw: &[u8]) -> Result<FormatRecord> {
    let (tag, bytes) = unframe(None, raw)?;
    expect_tag(None, "format record", tag, TAG_FORMAT)?;
    body(None, "format record", bytes)
}

/// Encodes a state record (always the current version; its digest must be
/// known).
pub(crate) fn encode_state(state: &StateRecord) -> Result<Vec<u8>> {
    let digest = state
        .digest
        .ok_or_else(|| Error::Storage("a state record without a digest".into()))?;
    frame(
        TAG_STATE_V2,
        &StateV2 {
            last_seq: state.last_seq,
            next_blob: state.next_blob,
            digest,
        },
    )
}

/// Decodes a state record of either version.
pub(crate) fn decode_state(raw: &[u8]) -> Result<StateRecord> {
    let (tag, bytes) = unframe(None, raw)?;
    match tag {
        TAG_STATE_V1 => {
            let v1: StateV1 = body(None, "state record", bytes)?;
            Ok(StateRecord {
                last_seq: v1.last_seq,
                next_blob: v1.next_blob,
                digest: None,
            })
        }
        _ => {
            expect_tag(None, "state record", tag, TAG_STATE_V2)?;
            let v2: StateV2 = body(None, "state record", bytes)?;
            Ok(StateRecord {
                last_seq: v2.last_seq,
                next_blob: v2.next_blob,
                digest: Some(v2.digest),
            })
        }
    }
}

/// A change to a key's deadline index entry, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LoggedDeadline<'a> {
    Keep,
    Set(#[serde(borrow, serialize_with = "bytes")] &'a [u8]),
    Clear,
}

/// One change to the metadata tree, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LoggedOp<'a> {
    /// A user record and its deadline entry.
    Put {
        key: &'a [u8],
        record: &'a [u8],
        #[serde(borrow)]
        deadline: LoggedDeadline<'a>,
    },
    /// Removal of a user record, and its deadline entry change.
    Remove {
        key: &'a [u8],
        #[serde(borrow)]
        deadline: LoggedDeadline<'a>,
    },
    /// A system record, by its key in the metadata tree, written or removed.
    Sys {
        key: &'a [u8],
        value: Option<&'a [u8]>,
    },
}

/// A whole commit, written as one redo record before it was applied, by
/// builds before undo logs: its presence (marked) after a crash means the
/// commit happened and must be applied again (see `storage::sled`, which
/// still applies one that such a build left behind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommitLog<'a> {
    #[serde(borrow)]
    pub ops: Vec<LoggedOp<'a>>,
}

#[cfg(test)]
pub(crate) fn encode_commit_log(log: &CommitLog<'_>) -> Result<Vec<u8>> {
    frame(TAG_COMMIT_LOG_V1, log)
}

pub(crate) fn decode_commit_log(raw: &[u8]) -> Result<CommitLog<'_>> {
    let (tag, bytes) = unframe(None, raw)?;
    expect_tag(None, "commit log", tag, TAG_COMMIT_LOG_V1)?;
    body(None, "commit log", bytes)
}

/// What one metadata-tree key held before a commit changed it: `None`
/// when it was absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Prior<'a> {
    #[serde(serialize_with = "bytes")]
    pub key: &'a [u8],
    #[serde(serialize_with = "optional_bytes")]
    pub value: Option<&'a [u8]>,
}

/// The prior contents of every metadata-tree key a commit changes, written
/// whole before the commit changes any of them: its presence (sealed) after
/// a crash means the commit did not happen, and open puts every key back
/// (see `storage::sled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UndoLog<'a> {
    #[serde(borrow)]
    pub priors: Vec<Prior<'a>>,
}

pub(crate) fn encode_undo_log(log: &UndoLog<'_>) -> Result<Vec<u8>> {
    let hint = log
        .priors
        .iter()
        .map(|p| p.key.len() + p.value.map_or(0, <[u8]>::len) + 8)
        .sum();
    frame_sized(TAG_UNDO_LOG_V1, log, hint)
}

pub(crate) fn decode_undo_log(raw: &[u8]) -> Result<UndoLog<'_>> {
    let (tag, bytes) = unframe(None, raw)?;
    expect_tag(None, "undo log", tag, TAG_UNDO_LOG_V1)?;
    body(None, "undo log", bytes)
}

/// The deadline index entry of a key: its deadline, in milliseconds since
/// the Unix epoch (the same as in its metadata record).
pub(crate) fn encode_deadline(deadline: u64) -> Result<Vec<u8>> {
    frame(TAG_DEADLINE_V1, &deadline)
}

pub(crate) fn decode_deadline(key: &[u8], raw: &[u8]) -> Result<u64> {
    let (tag, bytes) = unframe(Some(key), raw)?;
    expect_tag(Some(key), "deadline record", tag, TAG_DEADLINE_V1)?;
    body(Some(key), "deadline record", bytes)
}

pub(crate) fn encode_gc(gc: &GcRecord) -> Result<Vec<u8>> {
    frame(TAG_GC_V1, gc)
}

pub(crate) fn decode_gc(raw: &[u8]) -> Result<GcRecord> {
    let (tag, bytes) = unframe(None, raw)?;
    expect_tag(None, "gc record", tag, TAG_GC_V1)?;
    body(None, "gc record", bytes)
}

/// The **durable record**: what the last durable point (checkpoint,
/// shutdown, creation of the store) made durable, kept outside the store's
/// own log so that a store that comes back older than it promised can be
/// told apart from one that is as it was left.
///
/// Fixed layout, little endian: version 1 (48 bytes, no journal)
/// `magic "mpdurabl" (8) | version u32 | generation u64 | seq u64 |
/// records u64 | digest sum u64 | crc32 of everything before (4)`;
/// version 2 ([`DURABLE_RECORD_LEN`] bytes, written only while a journal
/// is in use, so that a store without one stays readable by builds that
/// know only version 1) adds `journal u64` before the crc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DurableRecord {
    /// Increases with every record written; the newest valid one wins.
    pub generation: u64,
    /// Every write with a seq up to this was durable when it was written.
    pub seq: u64,
    /// The store digest of the state at `seq`.
    pub digest: Digest,
    /// The number of the first journal segment of the journal in use (its
    /// records beyond `seq` are promised: `open` refuses a journal without
    /// that segment or a later one); 0 when no journal is in use.
    pub journal: u64,
}

/// The longest durable record (version 2).
pub(crate) const DURABLE_RECORD_LEN: usize = 56;
const DURABLE_V1_LEN: usize = 48;
const DURABLE_MAGIC: [u8; 8] = *b"mpdurabl";

pub(crate) fn encode_durable(r: &DurableRecord) -> Vec<u8> {
    let version: u32 = if r.journal == 0 { 1 } else { 2 };
    let mut out = Vec::with_capacity(DURABLE_RECORD_LEN);
    out.extend_from_slice(&DURABLE_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&r.generation.to_le_bytes());
    out.extend_from_slice(&r.seq.to_le_bytes());
    out.extend_from_slice(&r.digest.records.to_le_bytes());
    out.extend_from_slice(&r.digest.sum.to_le_bytes());
    if version == 2 {
        out.extend_from_slice(&r.journal.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a durable record; `None` if `raw` is not one (wrong length,
/// magic, version or checksum). Never panics.
pub(crate) fn decode_durable(raw: &[u8]) -> Option<DurableRecord> {
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(raw.get(at..at + 8)?.try_into().ok()?))
    };
    if raw.get(0..8)? != DURABLE_MAGIC {
        return None;
    }
    let len = match u32::from_le_bytes(raw.get(8..12)?.try_into().ok()?) {
        1 => DURABLE_V1_LEN,
        2 => DURABLE_RECORD_LEN,
        _ => return None,
    };
    let crc = u32::from_le_bytes(raw.get(len - 4..len)?.try_into().ok()?);
    if crc32fast::hash(raw.get(..len - 4)?) != crc {
        return None;
    }
    Some(DurableRecord {
        generation: u64_at(12)?,
        seq: u64_at(20)?,
        digest: Digest {
            records: u64_at(28)?,
            sum: u64_at(36)?,
        },
        journal: if len == DURABLE_RECORD_LEN {
            u64_at(44)?
        } else {
            0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode_meta(&MetaRecord {
            seq: 42,
            deadline: Some(1_700_000_000_000),
            value: ValueRef::Inline(b"hello"),
        })
        .unwrap()
    }

    /// The byte fields written with `serialize_bytes` encode exactly as
    /// serde's default for `&[u8]` (a sequence of `u8`), which earlier
    /// builds wrote: stores stay readable both ways.
    #[test]
    fn byte_fields_encode_as_before() {
        #[derive(Serialize)]
        enum OldValue<'a> {
            Inline(&'a [u8]),
        }
        #[derive(Serialize)]
        struct OldMeta<'a> {
            seq: u64,
            deadline: Option<u64>,
            value: OldValue<'a>,
        }
        #[derive(Serialize)]
        struct OldPrior<'a> {
            key: &'a [u8],
            value: Option<&'a [u8]>,
        }
        let long: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for v in [&b""[..], b"hello", &long] {
            let old = postcard::to_allocvec(&OldMeta {
                seq: 7,
                deadline: Some(9),
                value: OldValue::Inline(v),
            })
            .unwrap();
            let new = postcard::to_allocvec(&MetaRecord {
                seq: 7,
                deadline: Some(9),
                value: ValueRef::Inline(v),
            })
            .unwrap();
            assert_eq!(old, new);
            for value in [None, Some(v)] {
                let old = postcard::to_allocvec(&OldPrior { key: v, value }).unwrap();
                let new = postcard::to_allocvec(&Prior { key: v, value }).unwrap();
                assert_eq!(old, new);
            }
        }
        assert_eq!(
            postcard::to_allocvec(&&b"ab"[..]).unwrap(),
            postcard::to_allocvec(&LoggedDeadline::Set(b"ab")).unwrap()[1..]
        );
    }

    #[test]
    fn meta_round_trips_and_borrows_inline_values() {
        let raw = sample();
        let rec = decode_meta(b"k", &raw).unwrap();
        assert_eq!(rec.seq, 42);
        assert_eq!(rec.deadline, Some(1_700_000_000_000));
        let ValueRef::Inline(v) = rec.value else {
            panic!("expected inline")
        };
        assert_eq!(v, b"hello");
        let offset = v.as_ptr() as usize - raw.as_ptr() as usize;
        assert!(offset > 0 && offset + v.len() < raw.len());

        let blob = BlobRef::for_value(7, b"big value");
        let raw = encode_meta(&MetaRecord {
            seq: 1,
            deadline: None,
            value: ValueRef::Blob(blob),
        })
        .unwrap();
        assert_eq!(decode_meta(b"k", &raw).unwrap().value, ValueRef::Blob(blob));
        let stored = |v: &'static [u8]| Bytes::from_static(v);
        assert_eq!(
            blob.value(b"k", stored(b"big value")).unwrap(),
            b"big value"[..]
        );
        assert!(blob.value(b"k", stored(b"big valuf")).is_err());
        assert!(blob.value(b"k", stored(b"big")).is_err());
    }

    /// A record of a plain blob encodes as format version 1 wrote it (the
    /// `Blob` variant of two, then id, len, crc); a compressed one is the
    /// appended third variant.
    #[test]
    fn blob_records_encode_as_before_and_compressed_ones_after() {
        #[derive(Serialize)]
        enum OldValue<'a> {
            #[allow(dead_code)]
            Inline(&'a [u8]),
            Blob {
                id: u64,
                len: u64,
                crc: u32,
            },
        }
        let blob = BlobRef::for_value(7, b"big value");
        let old = postcard::to_allocvec(&OldValue::Blob {
            id: 7,
            len: 9,
            crc: blob.crc,
        })
        .unwrap();
        assert_eq!(postcard::to_allocvec(&ValueRef::Blob(blob)).unwrap(), old);
        let packed = BlobRef {
            compressed: Some(5),
            ..blob
        };
        let new = postcard::to_allocvec(&ValueRef::Blob(packed)).unwrap();
        assert_eq!(new[0], 2);
        assert_eq!(new[1..new.len() - 1], old[1..]);
        assert_eq!(new[new.len() - 1], 5);
        let raw = encode_meta(&MetaRecord {
            seq: 3,
            deadline: None,
            value: ValueRef::Blob(packed),
        })
        .unwrap();
        assert_eq!(
            decode_meta(b"k", &raw).unwrap().value,
            ValueRef::Blob(packed)
        );
    }

    #[test]
    fn a_value_is_compressed_only_when_that_saves_an_eighth() {
        let text: Bytes = br#"{"user":"someone","cart":[1,2,3],"path":"/products/"}"#
            .repeat(100)
            .into();
        let (blob, stored) = BlobRef::compress(1, &text);
        let n = blob.compressed.expect("text compresses");
        assert_eq!(n, stored.len() as u64);
        assert!(stored.len() < text.len() / 2);
        assert_eq!(
            (blob.len, blob.crc),
            (text.len() as u64, crc32fast::hash(&text))
        );
        assert_eq!(blob.value(b"k", stored.clone()).unwrap(), text);

        // Random bytes (here xorshift's) do not: stored as they are, the
        // same Bytes, not a copy.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Bytes = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
            .into();
        let (blob, stored) = BlobRef::compress(2, &random);
        assert_eq!(blob, BlobRef::for_value(2, &random));
        assert_eq!(stored.as_ptr(), random.as_ptr());
        // A value whose first KiB is random is not tried whole.
        let mut mixed = random[..1500].to_vec();
        mixed.extend_from_slice(&text);
        let mixed = Bytes::from(mixed);
        assert_eq!(BlobRef::compress(3, &mixed).0.compressed, None);

        // Damage to a compressed blob is an error, never a panic: every
        // byte flipped, every truncation, a wrong stated length.
        for i in 0..stored.len() {
            let mut bad = stored.to_vec();
            bad[i] ^= 0x55;
            let _ = blob.value(b"k", bad.into());
        }
        let (blob, stored) = BlobRef::compress(1, &text);
        for i in 0..stored.len() {
            let mut bad = stored.to_vec();
            bad[i] ^= 0x55;
            assert!(blob.value(b"k", bad.into()).is_err(), "flip at {i}");
            assert!(blob.value(b"k", stored.slice(..i)).is_err());
        }
        let wrong_len = BlobRef {
            len: blob.len + 1,
            ..blob
        };
        assert!(matches!(
            wrong_len.value(b"k", stored.clone()),
            Err(Error::Corrupt { .. })
        ));
        let huge = BlobRef {
            len: u64::MAX,
            ..blob
        };
        assert!(huge.value(b"k", stored).is_err());
    }

    #[test]
    fn every_single_byte_flip_and_truncation_is_detected() {
        let raw = sample();
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut bad = raw.clone();
                bad[i] ^= 1 << bit;
                assert!(matches!(
                    decode_meta(b"k", &bad),
                    Err(Error::Corrupt { .. })
                ));
            }
        }
        for len in 0..raw.len() {
            assert!(decode_meta(b"k", &raw[..len]).is_err());
        }
    }

    #[test]
    fn kinds_are_not_confused() {
        let state = encode_state(&StateRecord {
            last_seq: 1,
            next_blob: 2,
            digest: Some(Digest::default()),
        })
        .unwrap();
        assert!(decode_meta(b"k", &state).is_err());
        assert!(decode_format(&state).is_err());
        assert_eq!(decode_state(&state).unwrap().next_blob, 2);
        let gc = encode_gc(&GcRecord {
            blobs: vec![1, 2, 3],
        })
        .unwrap();
        assert_eq!(decode_gc(&gc).unwrap().blobs, vec![1, 2, 3]);
        let log = CommitLog {
            ops: vec![
                LoggedOp::Put {
                    key: b"k",
                    record: b"r",
                    deadline: LoggedDeadline::Set(b"d"),
                },
                LoggedOp::Remove {
                    key: b"",
                    deadline: LoggedDeadline::Clear,
                },
                LoggedOp::Sys {
                    key: b"\x00state",
                    value: None,
                },
            ],
        };
        let raw = encode_commit_log(&log).unwrap();
        assert_eq!(decode_commit_log(&raw).unwrap(), log);
        assert!(decode_commit_log(&raw[..raw.len() - 1]).is_err());
        let undo = UndoLog {
            priors: vec![
                Prior {
                    key: b"\x01k",
                    value: Some(b"r"),
                },
                Prior {
                    key: b"\x00state",
                    value: None,
                },
            ],
        };
        let raw = encode_undo_log(&undo).unwrap();
        assert_eq!(decode_undo_log(&raw).unwrap(), undo);
        assert!(decode_undo_log(&raw[..raw.len() - 1]).is_err());
        assert!(decode_commit_log(&raw).is_err());
        let d = encode_deadline(1_700_000_000_123).unwrap();
        assert_eq!(decode_deadline(b"k", &d).unwrap(), 1_700_000_000_123);
        assert!(decode_gc(&d).is_err());
        let f = decode_format(&encode_format().unwrap()).unwrap();
        assert_eq!((f.magic, f.version), (MAGIC, FORMAT_VERSION));
    }

    #[test]
    fn a_version_1_state_record_decodes_without_a_digest() {
        let raw = frame(
            TAG_STATE_V1,
            &StateV1 {
                last_seq: 7,
                next_blob: 9,
            },
        )
        .unwrap();
        let s = decode_state(&raw).unwrap();
        assert_eq!((s.last_seq, s.next_blob, s.digest), (7, 9, None));
        assert!(encode_state(&s).is_err(), "a digest is needed to write one");
    }

    #[test]
    fn the_digest_is_independent_of_order_and_sees_every_change() {
        let mut a = Digest::default();
        let mut b = Digest::default();
        a.add(b"k1", b"r1");
        a.add(b"k2", b"r2");
        b.add(b"k2", b"r2");
        b.add(b"k1", b"r1");
        assert_eq!(a, b);
        let mut c = a;
        c.remove(b"k1", b"r1");
        c.add(b"k1", b"r1'");
        assert_ne!(a, c, "a changed record moves the digest");
        let mut d = DigestDelta::default();
        d.put(b"k1", Some(b"r1"), b"r1'");
        assert_eq!(a.apply(d), c);
        // The key is part of the hash: the same record under another key differs.
        assert_ne!(Digest::hash(b"k1", b"r"), Digest::hash(b"k2", b"r"));
        assert_ne!(Digest::hash(b"k", b"1r"), Digest::hash(b"k1", b"r"));
    }

    #[test]
    fn durable_records_round_trip_and_reject_every_damage() {
        for journal in [0, 7] {
            let r = DurableRecord {
                generation: 3,
                seq: 1234,
                digest: Digest {
                    records: 10,
                    sum: 0xdead_beef,
                },
                journal,
            };
            let raw = encode_durable(&r);
            // Without a journal, version 1 (readable by builds before it).
            assert_eq!(raw.len(), if journal == 0 { 48 } else { 56 });
            assert_eq!(decode_durable(&raw), Some(r));
            for i in 0..raw.len() {
                for bit in 0..8 {
                    let mut bad = raw.clone();
                    bad[i] ^= 1 << bit;
                    assert_eq!(decode_durable(&bad), None, "flip of bit {bit} of byte {i}");
                }
            }
            for len in 0..raw.len() {
                assert_eq!(decode_durable(&raw[..len]), None);
            }
        }
        assert_eq!(decode_durable(&[0u8; DURABLE_RECORD_LEN]), None);
    }
}
