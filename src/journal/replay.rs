//! Reading the journal at open: which segments are needed, whether they
//! are whole, and the records beyond the store's recovered cut.
//!
//! The rules (DESIGN.md, "Journal"):
//! - A segment is deleted only once a durable cycle covers its successor's
//!   base, and the store never opens older than its durable record: so the
//!   records the store lacks (seqs above its cut) start in the newest
//!   segment whose base is at or below the cut. Older segments are
//!   leftovers of an interrupted truncation.
//! - From that segment on, numbers are consecutive, and every segment but
//!   the newest was synced whole before the next was created: a gap, or a
//!   bad record anywhere but at the end of the newest segment, is damage.
//! - A segment before the newest holds exactly the writes with seqs from
//!   its base (exclusive) to the next segment's base (inclusive), each
//!   once: every seq the engine hands out while a journal is attached is
//!   journaled, and a seal splits the stream at a freeze's cut. So a record
//!   missing from it (a segment cut short at a record boundary, say) is
//!   damage too.
//! - The newest segment ends at its first bad record (a write torn by the
//!   crash).
//!
//! Damage is refused with [`Error::Corrupt`] unless the caller accepts data
//! loss; then the records before it are kept and the rest dropped.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::buffer::Seq;
use crate::error::{Error, Result};
use crate::journal::format::{self, BadHeader, JournalWrite, Next};

/// What the journal holds beyond a store's cut.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// Records with seqs above the cut, in the order they were appended.
    pub records: Vec<Vec<JournalWrite>>,
    /// The highest seq in any segment read (the cut if none).
    pub last_seq: Seq,
    /// Every segment file found (needed or not): deleted once what they
    /// hold is durable in the store.
    pub files: Vec<PathBuf>,
    /// The number the next segment takes.
    pub next_number: u64,
}

/// Reads the journal in `dir` (a store's `journal/`; absent means empty)
/// for a store recovered at `cut`, whose durable record promises a journal
/// from segment `promised` on (0: none).
pub(crate) fn read(dir: &Path, cut: Seq, promised: u64, accept_loss: bool) -> Result<Replay> {
    let mut replay = Replay {
        last_seq: cut,
        next_number: 1,
        ..Replay::default()
    };
    let damage = |what: String| -> Result<()> {
        if accept_loss {
            log::warn!("millpond: accepting the loss of journal records: {what}");
            Ok(())
        } else {
            Err(Error::corrupt(None, format!("journal: {what}")))
        }
    };
    let missing = |what: &str| {
        format!(
            "the durable record says a journal was in use from segment {promised:016x}, \
             but {what} (deleted or lost: the writes it held beyond seq {} are gone)",
            cut.0
        )
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if promised > 0 {
                damage(missing("the journal directory is missing"))?;
            }
            return Ok(replay);
        }
        Err(e) => return Err(e.into()),
    };
    let mut segments: Vec<(u64, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .filter(|n| n.len() == 16)
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        segments.push((number, entry.path()));
    }
    segments.sort_unstable_by_key(|(n, _)| *n);
    replay.files = segments.iter().map(|(_, p)| p.clone()).collect();
    let Some(&(newest, _)) = segments.last() else {
        if promised > 0 {
            damage(missing("the journal directory holds no segment"))?;
        }
        return Ok(replay);
    };
    replay.next_number = newest
        .checked_add(1)
        .ok_or_else(|| Error::corrupt(None, "journal: a segment number is out of range"))?;

    // Headers, newest first, until one with a base at or below the cut.
    let mut needed: Vec<(u64, PathBuf, Bytes, Seq)> = Vec::new();
    let mut found_start = false;
    for (number, path) in segments.iter().rev() {
        let data = Bytes::from(fs::read(path)?);
        let header = match format::decode_header(&data) {
            Ok(h) if h.number == *number => h,
            Ok(h) => {
                damage(format!(
                    "segment file {} says it is segment {}",
                    path.display(),
                    h.number
                ))?;
                break;
            }
            Err(BadHeader::Unwritten) if needed.is_empty() => {
                // Made (ahead of need, or cut short by a crash) but never
                // begun, after every begun segment: no record was ever
                // written to it (a header is synced before any record, and
                // a later file is made only after that). Such files may
                // be several: an open that crashed while beginning its
                // segment leaves one beside the spare made ahead.
                continue;
            }
            Err(BadHeader::Version(v)) => {
                return Err(Error::UnsupportedFormat {
                    found: v,
                    supported: 1,
                })
            }
            Err(_) => {
                damage(format!("segment {} has a damaged header", path.display()))?;
                break;
            }
        };
        let base = header.base;
        needed.push((*number, path.clone(), data, base));
        if base <= cut {
            found_start = true;
            break;
        }
    }
    // The newest segment with a header: the journal in use then, or a later
    // one.
    let newest_begun = needed.first().map(|(n, ..)| *n);
    if promised > 0 && newest_begun.is_none_or(|n| n < promised) {
        damage(missing(&format!(
            "its newest segment with a header is {}",
            newest_begun.map_or("none".into(), |n| format!("{n:016x}"))
        )))?;
    }
    needed.reverse();
    if !found_start {
        if let Some((_, path, _, base)) = needed.first() {
            damage(format!(
                "the oldest segment ({}) starts after seq {}, but the store holds writes only up to seq {}: the records between are missing",
                path.display(),
                base.0,
                cut.0
            ))?;
        }
    }
    let mut expected = needed.first().map(|(n, ..)| *n);
    let last = needed.len().saturating_sub(1);
    'segments: for (i, (number, path, data, base)) in needed.iter().enumerate() {
        if expected != Some(*number) {
            damage(format!(
                "segment {:016x} is missing (found {:016x} next)",
                expected.unwrap_or_default(),
                number
            ))?;
            break;
        }
        expected = number.checked_add(1);
        let upper = needed.get(i + 1).map(|(_, _, _, b)| *b);
        let mut at = format::HEADER_LEN;
        let mut writes_seen = 0u64;
        loop {
            match format::read_record(data, at) {
                Next::End => {
                    if let Some(upper) = upper {
                        let expected = upper.0.saturating_sub(base.0);
                        if writes_seen != expected {
                            damage(format!(
                                "segment {} holds {writes_seen} writes, but every one of seqs {}..={} ({expected}) should be there",
                                path.display(),
                                base.0.saturating_add(1),
                                upper.0
                            ))?;
                            break 'segments;
                        }
                    }
                    break;
                }
                Next::Bad(why) => {
                    if i != last {
                        damage(format!(
                            "{why} at offset {at} of segment {}, which is not the newest",
                            path.display()
                        ))?;
                        break 'segments;
                    }
                    // The newest segment ends at its first bad record.
                    log::info!(
                        "millpond: the journal ends at offset {at} of {} ({why}): a write torn by a crash",
                        path.display()
                    );
                    break;
                }
                Next::Record(writes, next) => {
                    at = next;
                    let (lo, hi) = writes.iter().fold((u64::MAX, 0), |(lo, hi), w| {
                        (lo.min(w.seq.0), hi.max(w.seq.0))
                    });
                    let in_range = lo > base.0 && upper.is_none_or(|u| hi <= u.0);
                    let one_side = hi <= cut.0 || lo > cut.0;
                    if !in_range || !one_side {
                        damage(format!(
                            "a record with seqs {lo}..={hi} in segment {} (base {}) does not belong there",
                            path.display(),
                            base.0
                        ))?;
                        break 'segments;
                    }
                    writes_seen += writes.len() as u64;
                    replay.last_seq = replay.last_seq.max(Seq(hi));
                    if lo > cut.0 {
                        replay.records.push(writes);
                    }
                }
            }
        }
    }
    Ok(replay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Slot;
    use crate::journal::format::{append_record, encode_header, SegmentHeader};
    use crate::journal::segment_name;

    fn segment(dir: &Path, number: u64, base: u64, seqs: &[u64]) -> PathBuf {
        let mut data = encode_header(&SegmentHeader {
            number,
            base: Seq(base),
        })
        .to_vec();
        let v = Slot::Value(Bytes::from_static(b"value"));
        for &s in seqs {
            let key = s.to_le_bytes();
            append_record(&mut data, std::iter::once((Seq(s), &key[..], &v, None)));
        }
        let path = dir.join(segment_name(number));
        fs::write(&path, data).unwrap();
        path
    }

    fn read_at(dir: &Path, cut: Seq, accept_loss: bool) -> Result<Replay> {
        read(dir, cut, 0, accept_loss)
    }

    #[test]
    fn a_journal_the_durable_record_promises_must_be_there() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        assert!(read(&journal, Seq(3), 2, false).is_err(), "no directory");
        fs::create_dir(&journal).unwrap();
        assert!(read(&journal, Seq(3), 2, false).is_err(), "no segment");
        segment(&journal, 1, 0, &[1]);
        let e = read(&journal, Seq(3), 2, false).unwrap_err();
        assert!(e.to_string().contains("segment 0000000000000002"), "{e}");
        segment(&journal, 2, 1, &[2]);
        assert!(read(&journal, Seq(3), 2, false).is_ok());
        // Accepted: read as it is.
        fs::remove_dir_all(&journal).unwrap();
        assert!(read(&journal, Seq(3), 2, true).unwrap().records.is_empty());
    }

    fn seqs(r: &Replay) -> Vec<u64> {
        r.records.iter().flatten().map(|w| w.seq.0).collect()
    }

    #[test]
    fn replays_what_is_beyond_the_cut_and_skips_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, 0, &[1, 2]);
        segment(dir.path(), 3, 5, &[6, 7]);
        segment(dir.path(), 4, 7, &[8, 9]);
        // Segment 3 is complete (seqs 6 and 7, up to segment 4's base).
        let r = read_at(dir.path(), Seq(6), false).unwrap();
        assert_eq!(seqs(&r), vec![7, 8, 9]);
        assert_eq!(r.last_seq, Seq(9));
        assert_eq!(r.next_number, 5);
        assert_eq!(r.files.len(), 3);
    }

    #[test]
    fn a_torn_tail_of_the_newest_segment_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 1, 0, &[1, 2, 3]);
        let mut data = fs::read(&path).unwrap();
        data.truncate(data.len() - 3);
        fs::write(&path, data).unwrap();
        let r = read_at(dir.path(), Seq(0), false).unwrap();
        assert_eq!(seqs(&r), vec![1, 2]);
    }

    #[test]
    fn damage_before_the_newest_segment_or_a_gap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let old = segment(dir.path(), 1, 0, &[1, 2, 3]);
        segment(dir.path(), 2, 3, &[4]);
        let mut data = fs::read(&old).unwrap();
        let n = data.len();
        data[n - 2] ^= 1;
        fs::write(&old, data).unwrap();
        assert!(matches!(
            read_at(dir.path(), Seq(0), false),
            Err(Error::Corrupt { .. })
        ));
        // Accepted: the records before the damage.
        let r = read_at(dir.path(), Seq(0), true).unwrap();
        assert_eq!(seqs(&r), vec![1, 2]);

        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, 0, &[1]);
        segment(dir.path(), 3, 2, &[3]);
        assert!(matches!(
            read_at(dir.path(), Seq(0), false),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn a_segment_before_the_newest_missing_a_write_is_refused() {
        // Cut short at a record boundary: every record it keeps is whole.
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, 0, &[1, 2]);
        segment(dir.path(), 2, 3, &[4]);
        let e = read_at(dir.path(), Seq(0), false).unwrap_err();
        assert!(e.to_string().contains("should be there"), "{e}");
        // Whole, it is read.
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, 0, &[2, 1, 3]);
        segment(dir.path(), 2, 3, &[4]);
        assert_eq!(
            seqs(&read_at(dir.path(), Seq(0), false).unwrap()),
            vec![2, 1, 3, 4]
        );
    }

    #[test]
    fn a_journal_that_starts_after_the_cut_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 2, 10, &[11]);
        let e = read_at(dir.path(), Seq(4), false).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn a_newest_segment_cut_short_before_its_header_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, 0, &[1]);
        fs::write(dir.path().join(segment_name(2)), b"mpj").unwrap();
        let r = read_at(dir.path(), Seq(0), false).unwrap();
        assert_eq!(seqs(&r), vec![1]);
        assert_eq!(r.next_number, 3);
    }

    #[test]
    fn unbegun_files_after_the_newest_segment_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        segment(dir.path(), 1, 0, &[1]);
        // The spare made ahead, and a segment an open began to make.
        fs::write(dir.path().join(segment_name(2)), vec![0u8; 4096]).unwrap();
        fs::write(dir.path().join(segment_name(3)), vec![0u8; 100]).unwrap();
        let r = read_at(dir.path(), Seq(0), false).unwrap();
        assert_eq!(seqs(&r), vec![1]);
        assert_eq!(r.next_number, 4);
        // Between two begun segments, a zero header is damage.
        segment(dir.path(), 4, 1, &[2]);
        assert!(read_at(dir.path(), Seq(0), false).is_err());
    }

    #[test]
    fn no_directory_is_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        let r = read_at(&dir.path().join("journal"), Seq(3), false).unwrap();
        assert!(r.records.is_empty() && r.files.is_empty());
        assert_eq!(r.last_seq, Seq(3));
    }
}
