//! The write-ahead journal: [`Journal`] (the mode a store is opened with).
//!
//! With a mode other than [`Journal::Off`], every write is appended to the
//! journal's files (`journal/` in the store directory) as a checksummed
//! record with its seq, under the shard lock that orders it, before the call
//! that made it returns; `open` replays the records a crash left beyond the
//! store's recovered cut. See DESIGN.md, "Journal".

use std::time::Duration;

/// How the write-ahead journal protects acknowledged writes
/// ([`Config::journal`](crate::Config::journal)). The default is
/// [`Journal::Off`].
///
/// | mode | a write survives a process crash | a write survives a power cut |
/// |---|---|---|
/// | `Off` | once a flush cycle committed it (within `write_delay` plus one cycle) | after a later `checkpoint` |
/// | `Periodic(d)` | within about `d` (the background write) | within about `d` (the background fdatasync) |
/// | `Process` | on return | after a later `checkpoint`, or within the journal's own syncs |
/// | `Power` | on return | on return |
///
/// `Process` and `Power` use group commit: writers that return at about the
/// same time share one `write` (and, for `Power`, one `fdatasync`). The
/// journal lives beside a store directory: a temporary store
/// ([`Config::temporary`](crate::Config::temporary)) and a PostgreSQL
/// store take only `Off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Journal {
    /// No journal: a write is in memory until a flush cycle commits it.
    #[default]
    Off,
    /// Records are written and fdatasynced in the background every `d`
    /// (like Redis's `appendfsync everysec`): a crash or a power cut loses
    /// at most about `d` of acknowledged writes. Between 1 ms and 1 hour.
    Periodic(Duration),
    /// Each write is handed to the operating system (written, not synced)
    /// before it returns: no acknowledged write is lost to a crash of the
    /// process.
    Process,
    /// Each write is fdatasynced before it returns: no acknowledged write is
    /// lost to a power cut.
    Power,
}

pub(crate) mod format;
pub(crate) mod replay;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::buffer::{Seq, Slot};
use crate::clock::UnixMillis;
use crate::error::{Error, Result};
use format::SegmentHeader;

/// The journal's directory inside a store directory.
pub(crate) const DIR: &str = "journal";
/// A segment is sealed (and a new one begun) at the first freeze after it
/// holds this many bytes.
const SEGMENT_BYTES: u64 = 4 << 20;
/// A segment file is made this long, in zeros written and synced, before
/// any record goes into it: a record written over those zeros changes no
/// file metadata, so its `fdatasync` writes the data page alone (measured on
/// this project's ext4 disk: about 1.5 times as many syncs per second as
/// appends that grow the file). Records past it grow the file as usual.
/// Segments after the first are made ahead by the coordinator
/// ([`Writer::rotate`]), off the writers' path.
const PREALLOCATED: u64 = SEGMENT_BYTES + (512 << 10);
/// The first segment of an open is made by `open` itself: smaller, so that
/// an open does not wait for megabytes of zeros; it is sealed early, at
/// half of this.
const FIRST_PREALLOCATED: u64 = 1 << 20;
/// Journal bytes not yet covered by a durable cycle past which the
/// coordinator makes its next cycle durable, so that truncation keeps the
/// journal near this size.
pub(crate) const SYNC_AFTER_BYTES: u64 = 64 << 20;
/// Under `Periodic`, records waiting in memory past which a writer hands
/// them to the operating system itself instead of waiting for the timer.
const MAX_PENDING_BYTES: usize = 16 << 20;

/// Under `Process`, how often a waiter yields to a writing leader before
/// it sleeps.
const SPINS: u32 = 32;

/// The name of segment `number`.
pub(crate) fn segment_name(number: u64) -> String {
    format!("{number:016x}.log")
}

/// A position in the journal's stream of records: the number of bytes
/// appended before the end of a record. A write is in the operating system
/// once `written` reaches its ticket, on the device once `synced` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Ticket(pub u64);

/// How far a wait for a ticket must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Written to the file (survives a crash of the process).
    Written,
    /// Written and fdatasynced (survives a power cut).
    Synced,
}

/// The open journal of an engine (not `Off`): appends records, writes and
/// syncs them (group commit), seals segments at freezes, and deletes the
/// segments a durable cycle covers.
///
/// Records are appended under the shard locks that order their writes
/// (by `DirtyMap`, the one place seqs are handed out), so the stream's order
/// agrees with every order a reader could have seen, and any prefix of it
/// is a state some instant of the engine had.
pub(crate) struct Writer {
    mode: Journal,
    dir: PathBuf,
    /// Records appended, not yet handed to the file.
    pending: Mutex<Pending>,
    /// The file side; held by the one thread writing (the group commit's
    /// leader, the periodic thread, or truncation).
    io: Mutex<Io>,
    /// Whether a group commit's leader is writing; waiters for a ticket
    /// that it may cover wait on `progress` meanwhile.
    leader: Mutex<bool>,
    progress: Condvar,
    written: AtomicU64,
    synced: AtomicU64,
    /// Set once by the first I/O error: from then on writes are refused
    /// (the journal cannot keep its promise); cycles and checkpoints still
    /// run.
    failed: OnceLock<String>,
    /// The periodic thread's stop flag and wake-up.
    stop: Mutex<bool>,
    tick: Condvar,
    periodic: Mutex<Option<JoinHandle<()>>>,
    /// Bytes in segments not yet deleted (written or pending).
    retained: AtomicU64,
    /// A seal is pending: the next writer or the cycle's rotate writes it.
    sealed: AtomicBool,
    /// `write` calls and fdatasyncs of segment files (group commit shows
    /// as fewer of these than writes acknowledged).
    file_writes: AtomicU64,
    file_syncs: AtomicU64,
}

/// What [`Writer::counts`] reports.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub file_writes: u64,
    pub file_syncs: u64,
    pub retained_bytes: u64,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Stream position of the end of `bytes`.
    end: u64,
    /// Bytes appended since the current segment began.
    segment_bytes: u64,
    /// The segment is sealed at the first freeze after it holds this many
    /// bytes: `SEGMENT_BYTES`, or less for the first segment of an open
    /// (whose preallocated space is smaller).
    seal_at: u64,
    /// Segment boundaries inside `bytes`: the offset where the next segment
    /// begins, and its base (the cut of the freeze that sealed).
    seals: Vec<(usize, Seq)>,
}

struct Io {
    file: File,
    number: u64,
    /// Bytes in the current segment's file.
    size: u64,
    /// Closed segments not yet deleted: number, size, and the base of the
    /// segment after it (every record in it has a seq at or below that).
    closed: Vec<(u64, u64, Seq)>,
    /// The buffer swapped with `Pending::bytes` on each write.
    spare: Vec<u8>,
    /// The next segment's file, made ahead (`number + 1`, zeros only) so
    /// that a rotation does not wait for its zeros.
    next: Option<File>,
}

impl Writer {
    /// Begins a new segment `number` with `base` (no write with a seq above
    /// it is in any older segment) in `store_dir`'s journal, and starts the
    /// periodic thread for `Periodic`. `mode` is not `Off`.
    pub(crate) fn start(
        store_dir: &Path,
        mode: Journal,
        number: u64,
        base: Seq,
    ) -> Result<Arc<Writer>> {
        let dir = store_dir.join(DIR);
        let new_dir = !dir.is_dir();
        fs::create_dir_all(&dir)?;
        if new_dir {
            sync_dir(store_dir)?;
        }
        let file = prepare_segment(&dir, number, FIRST_PREALLOCATED)?;
        begin_segment(&file, number, base)?;
        let writer = Arc::new(Writer {
            mode,
            dir,
            pending: Mutex::new(Pending {
                seal_at: FIRST_PREALLOCATED / 2,
                ..Pending::default()
            }),
            io: Mutex::new(Io {
                file,
                number,
                size: format::HEADER_LEN as u64,
                closed: Vec::new(),
                spare: Vec::new(),
                next: None,
            }),
            leader: Mutex::new(false),
            progress: Condvar::new(),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            failed: OnceLock::new(),
            stop: Mutex::new(false),
            tick: Condvar::new(),
            periodic: Mutex::new(None),
            retained: AtomicU64::new(format::HEADER_LEN as u64),
            sealed: AtomicBool::new(false),
            file_writes: AtomicU64::new(0),
            file_syncs: AtomicU64::new(0),
        });
        if let Journal::Periodic(every) = mode {
            let w = Arc::clone(&writer);
            let handle = std::thread::Builder::new()
                .name("millpond-journal".into())
                .spawn(move || w.run_periodic(every))?;
            *writer.periodic.lock() = Some(handle);
        }
        Ok(writer)
    }

    /// Appends one record of `writes` (called under the shard locks of
    /// every key in it, after their seqs were handed out). Never blocks on
    /// I/O.
    pub(crate) fn append<'a>(
        &self,
        writes: impl ExactSizeIterator<Item = (Seq, &'a [u8], &'a Slot, Option<UnixMillis>)>,
    ) -> Ticket {
        let mut p = self.pending.lock();
        let before = p.bytes.len();
        format::append_record(&mut p.bytes, writes);
        let added = (p.bytes.len() - before) as u64;
        p.end += added;
        p.segment_bytes += added;
        self.retained.fetch_add(added, Ordering::Relaxed);
        Ticket(p.end)
    }

    /// Called by a freeze at `cut`, under every shard lock: every record
    /// appended so far has a seq at or below `cut`, every later one above
    /// it. If the current segment is large enough, the records after this
    /// point go to a new segment with base `cut`.
    pub(crate) fn seal(&self, cut: Seq) {
        let mut p = self.pending.lock();
        if p.segment_bytes >= p.seal_at {
            let at = p.bytes.len();
            p.seals.push((at, cut));
            p.segment_bytes = 0;
            p.seal_at = SEGMENT_BYTES;
            self.sealed.store(true, Ordering::Release);
        }
    }

    /// Refuses a write once the journal has failed.
    pub(crate) fn check(&self) -> Result<()> {
        match self.failed.get() {
            Some(reason) => Err(Error::Poisoned {
                reason: format!("the journal could not be written: {reason}"),
            }),
            None => Ok(()),
        }
    }

    /// What the mode asks before a write returns: nothing (`Periodic`, but
    /// see `MAX_PENDING_BYTES`), written (`Process`) or synced (`Power`).
    pub(crate) fn acknowledge(&self, ticket: Ticket) -> Result<()> {
        match self.mode {
            Journal::Off => Ok(()),
            Journal::Periodic(_) => {
                if self.pending.lock().bytes.len() > MAX_PENDING_BYTES {
                    self.wait(ticket, Reach::Written)
                } else {
                    self.check()
                }
            }
            Journal::Process => self.wait(ticket, Reach::Written),
            Journal::Power => self.wait(ticket, Reach::Synced),
        }
    }

    /// Returns once the record ending at `ticket` has reached `reach`.
    /// Group commit: a waiter becomes the leader if there is none, and
    /// writes (and syncs) everything appended so far; the others wait for
    /// it, all woken together when it is done, and those it covered return
    /// without I/O; one of the rest leads the next group, which holds
    /// everything appended meanwhile.
    pub(crate) fn wait(&self, ticket: Ticket, reach: Reach) -> Result<()> {
        let done = |w: &Writer| {
            let at = match reach {
                Reach::Written => &w.written,
                Reach::Synced => &w.synced,
            };
            at.load(Ordering::Acquire) >= ticket.0
        };
        loop {
            if done(self) {
                return Ok(());
            }
            self.check()?;
            let mut leader = self.leader.lock();
            if done(self) {
                return Ok(());
            }
            if *leader {
                if reach == Reach::Written {
                    // A leader's `write` takes about a microsecond: give
                    // it the processor a few times before sleeping (a
                    // sleep and a wake-up cost more than the write).
                    drop(leader);
                    for _ in 0..SPINS {
                        std::thread::yield_now();
                        if done(self) {
                            return Ok(());
                        }
                    }
                    leader = self.leader.lock();
                    if !*leader {
                        continue;
                    }
                }
                self.progress.wait(&mut leader);
                continue;
            }
            *leader = true;
            drop(leader);
            if reach == Reach::Synced {
                // A sync costs far more than a yield: let the writers the
                // last group woke append first, so that this one covers
                // them too.
                std::thread::yield_now();
            }
            let outcome = {
                let mut io = self.io.lock();
                self.write_out(&mut io, reach == Reach::Synced)
            };
            *self.leader.lock() = false;
            self.progress.notify_all();
            outcome?;
        }
    }

    /// Writes a pending seal (and the records before it) now, then makes
    /// the file of the segment after the new one: called by a cycle after
    /// its freeze, so that segments are begun and made off the writers'
    /// path.
    pub(crate) fn rotate(&self) {
        if self.failed.get().is_some() {
            return;
        }
        if self.sealed.load(Ordering::Acquire) {
            let mut io = self.io.lock();
            if let Err(e) = self.write_out(&mut io, false) {
                log::error!("millpond: the journal failed: {e}");
                return;
            }
        }
        let number = {
            let io = self.io.lock();
            if io.next.is_some() {
                return;
            }
            io.number + 1
        };
        // Zeros are written without the file mutex: writers go on.
        match prepare_segment(&self.dir, number, PREALLOCATED) {
            Ok(file) => {
                let mut io = self.io.lock();
                if io.next.is_none() && io.number + 1 == number {
                    io.next = Some(file);
                }
            }
            Err(e) => log::warn!("millpond: making journal segment {number} ahead failed: {e}"),
        }
    }

    /// Hands every pending record to the file (beginning new segments at
    /// seals), then fdatasyncs with `sync`. The first error fails the
    /// journal for good.
    fn write_out(&self, io: &mut Io, sync: bool) -> Result<()> {
        let (bytes, seals, end) = {
            let mut p = self.pending.lock();
            io.spare.clear();
            let bytes = std::mem::replace(&mut p.bytes, std::mem::take(&mut io.spare));
            self.sealed.store(false, Ordering::Release);
            (bytes, std::mem::take(&mut p.seals), p.end)
        };
        let outcome = self.write_bytes(io, &bytes, &seals, sync);
        let wrote = !bytes.is_empty();
        io.spare = bytes;
        match outcome {
            Ok(()) => {
                // Counted once done: a sync counted has completed.
                self.file_writes
                    .fetch_add(u64::from(wrote), Ordering::Relaxed);
                self.file_syncs
                    .fetch_add(u64::from(sync), Ordering::Relaxed);
                self.written.fetch_max(end, Ordering::AcqRel);
                if sync {
                    self.synced.fetch_max(end, Ordering::AcqRel);
                }
                Ok(())
            }
            Err(e) => {
                let _ = self.failed.set(e.to_string());
                log::error!("millpond: the journal failed, writes are refused: {e}");
                self.check()
            }
        }
    }

    fn write_bytes(
        &self,
        io: &mut Io,
        bytes: &[u8],
        seals: &[(usize, Seq)],
        sync: bool,
    ) -> io::Result<()> {
        let mut at = 0;
        for &(offset, base) in seals {
            io.file.write_all_at(&bytes[at..offset], io.size)?;
            io.size += (offset - at) as u64;
            // The old segment is whole on the device before the new one
            // has a header: only the newest segment can end in a torn
            // record.
            io.file.sync_data()?;
            let number = io.number + 1;
            let file = match io.next.take() {
                Some(file) => file,
                None => prepare_segment(&self.dir, number, PREALLOCATED)?,
            };
            begin_segment(&file, number, base)?;
            io.closed.push((io.number, io.size, base));
            io.file = file;
            io.number = number;
            io.size = format::HEADER_LEN as u64;
            self.retained
                .fetch_add(format::HEADER_LEN as u64, Ordering::Relaxed);
            at = offset;
        }
        io.file.write_all_at(&bytes[at..], io.size)?;
        io.size += (bytes.len() - at) as u64;
        if sync {
            io.file.sync_data()?;
        }
        Ok(())
    }

    /// Deletes every closed segment whose records all have a seq at or
    /// below `durable` (a durable cycle covers them). A failed deletion is
    /// logged and tried again at the next durable point.
    pub(crate) fn truncate(&self, durable: Seq) {
        let mut io = self.io.lock();
        let mut kept = Vec::new();
        for (number, size, successor_base) in std::mem::take(&mut io.closed) {
            if successor_base > durable {
                kept.push((number, size, successor_base));
                continue;
            }
            match fs::remove_file(self.dir.join(segment_name(number))) {
                Ok(()) => {
                    self.retained.fetch_sub(size, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.retained.fetch_sub(size, Ordering::Relaxed);
                }
                Err(e) => {
                    log::warn!("millpond: removing journal segment {number} failed: {e}");
                    kept.push((number, size, successor_base));
                }
            }
        }
        io.closed = kept;
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            file_writes: self.file_writes.load(Ordering::Relaxed),
            file_syncs: self.file_syncs.load(Ordering::Relaxed),
            retained_bytes: self.retained.load(Ordering::Relaxed),
        }
    }

    /// Whether the journal has grown enough that the next cycle should be
    /// durable (so that truncation can shrink it).
    pub(crate) fn wants_sync(&self) -> bool {
        self.retained.load(Ordering::Relaxed) >= SYNC_AFTER_BYTES
    }

    /// Stops the periodic thread (at shutdown, or a simulated crash). With
    /// `flush`, writes and syncs what is pending first.
    pub(crate) fn stop(&self, flush: bool) {
        *self.stop.lock() = true;
        self.tick.notify_all();
        if let Some(handle) = self.periodic.lock().take() {
            if handle.join().is_err() {
                log::error!("millpond: the journal thread panicked");
            }
        }
        if flush && self.failed.get().is_none() {
            let mut io = self.io.lock();
            let _ = self.write_out(&mut io, true);
        }
    }

    fn run_periodic(&self, every: Duration) {
        loop {
            {
                let mut stop = self.stop.lock();
                if *stop {
                    return;
                }
                let _ = self.tick.wait_for(&mut stop, every);
                if *stop {
                    return;
                }
            }
            if self.failed.get().is_some() {
                continue;
            }
            let mut io = self.io.lock();
            let _ = self.write_out(&mut io, true);
        }
    }
}

/// Makes the file of segment `number`: `len` zeros, synced, and its
/// directory entry synced. Until [`begin_segment`] writes its header,
/// replay takes it for a segment never written. A file of that name left by
/// an earlier attempt that failed is made again (no begun segment has this
/// number: numbers only grow, and `open` numbers after every file found);
/// on a failure the file is removed.
fn prepare_segment(dir: &Path, number: u64, len: u64) -> io::Result<File> {
    let path = dir.join(segment_name(number));
    let made = fill_zeros(&path, len).and_then(|file| {
        sync_dir(dir)?;
        Ok(file)
    });
    if made.is_err() {
        let _ = fs::remove_file(&path);
    }
    made
}

fn fill_zeros(path: &Path, len: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    // Page by page: the page cache then keeps one page per folio, so that a
    // record written later dirties (and is counted as) one page, not the
    // whole large folio a big write would have made (Linux counts a
    // process's `write_bytes` by the folio it dirties: 1 MiB writes of
    // zeros made every synced record count as 1 MiB, though the device
    // wrote one page).
    let zeros = [0u8; 4096];
    let mut at = 0;
    while at < len {
        let n = zeros.len().min((len - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()?;
    Ok(file)
}

/// Writes segment `number`'s header (with `base`) and syncs it, before any
/// record goes into it.
fn begin_segment(file: &File, number: u64, base: Seq) -> io::Result<()> {
    file.write_all_at(&format::encode_header(&SegmentHeader { number, base }), 0)?;
    file.sync_data()
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_file_left_by_a_failed_attempt_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(segment_name(5)), b"half made").unwrap();
        let file = prepare_segment(dir.path(), 5, 8192).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 8192);
        let data = fs::read(dir.path().join(segment_name(5))).unwrap();
        assert!(data.iter().all(|b| *b == 0));
    }
}
