//! [`TestFs`]: the FUSE front end. Every request locks the shared [`Model`]
//! and maps to one of its methods; errors become the model's `errno`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use crate::model::{Attr, DirEntry, Model, NodeKind, SetAttr};

/// Attribute and entry cache lifetime given to the kernel: none, so that
/// every lookup and `stat` reaches the model (correctness over speed).
const TTL: Duration = Duration::ZERO;

const BLOCK_SIZE: u32 = 4096;

/// The FUSE filesystem: a thin adapter from `fuser` requests to a shared
/// [`Model`]. Mount it with [`crate::mount`] rather than by hand.
#[derive(Debug)]
pub struct TestFs {
    model: Arc<Mutex<Model>>,
    /// Directory listings taken at `opendir` (and again at offset 0), so
    /// that paging through a directory is stable while it changes. Keyed by
    /// the model's handle number.
    dir_handles: HashMap<u64, Vec<DirEntry>>,
}

impl TestFs {
    /// A filesystem serving `model`.
    pub fn new(model: Arc<Mutex<Model>>) -> TestFs {
        TestFs {
            model,
            dir_handles: HashMap::new(),
        }
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        // A panic elsewhere must not take the filesystem down with it.
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// Permission bits from a mode and umask given by the kernel.
fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

fn offset(offset: i64) -> Result<u64, i32> {
    u64::try_from(offset).map_err(|_| libc::EINVAL)
}

impl Filesystem for TestFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.model().lookup(parent, name) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), 0),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.model().forget(ino, nlookup);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.model().getattr(ino) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            perm: mode.map(|m| perm(m, 0)),
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        match self.model().setattr(ino, change) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(libc::EPERM);
            return;
        }
        let r = self
            .model()
            .create(parent, name, perm(mode, umask), req.uid(), req.gid());
        match r {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), 0),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .model()
            .mkdir(parent, name, perm(mode, umask), req.uid(), req.gid());
        match r {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.model().unlink(parent, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.model().rmdir(parent, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        match self.model().rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        // O_TRUNC is not forwarded (no FUSE_ATOMIC_O_TRUNC): the kernel sends
        // a setattr(size=0) instead. No FOPEN_* flags: no direct I/O and no
        // page cache kept across opens; writes are write-through. Each open
        // gets its own handle number: fsync errors are reported per handle.
        match self.model().open(ino, false) {
            Ok(fh) => reply.opened(fh, 0),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        off: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: fuser::ReplyData,
    ) {
        let off = match offset(off) {
            Ok(o) => o,
            Err(e) => return reply.error(e),
        };
        let model = self.model();
        match model.read(ino, off, size) {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        off: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let r = offset(off).and_then(|off| self.model().write(ino, off, data));
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        // close(2): not a durability point.
        match self.model().getattr(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.model().release(fh);
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        match self.model().fsync(ino, fh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let opened = {
            let mut model = self.model();
            model
                .open(ino, true)
                .and_then(|fh| match model.readdir(ino) {
                    Ok(listing) => Ok((fh, listing)),
                    Err(e) => {
                        model.release(fh);
                        Err(e)
                    }
                })
        };
        match opened {
            Ok((fh, listing)) => {
                self.dir_handles.insert(fh, listing);
                reply.opened(fh, 0);
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        off: i64,
        mut reply: ReplyDirectory,
    ) {
        let Ok(off) = usize::try_from(off) else {
            return reply.error(libc::EINVAL);
        };
        if off == 0 || !self.dir_handles.contains_key(&fh) {
            // rewinddir (or an unknown handle): take a fresh listing.
            let listing = self.model().readdir(ino);
            match listing {
                Ok(listing) => {
                    self.dir_handles.insert(fh, listing);
                }
                Err(e) => return reply.error(e),
            }
        }
        let listing = self.dir_handles.get(&fh).map(Vec::as_slice).unwrap_or(&[]);
        for (i, entry) in listing.iter().enumerate().skip(off) {
            if reply.add(
                entry.ino,
                (i + 1) as i64,
                file_type(entry.kind),
                &entry.name,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.dir_handles.remove(&fh);
        self.model().release(fh);
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.model().fsync(ino, fh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        // Made-up but plausible numbers: 64 GiB, nearly all free.
        let blocks = 1u64 << 24;
        let files = 1u64 << 20;
        reply.statfs(
            blocks,
            blocks - 1,
            blocks - 1,
            files,
            files - 1,
            BLOCK_SIZE,
            255,
            BLOCK_SIZE,
        );
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions).
        match self.model().getattr(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = {
            let mut model = self.model();
            model
                .create(parent, name, perm(mode, umask), req.uid(), req.gid())
                .and_then(|a| model.open(a.ino, false).map(|fh| (a, fh)))
        };
        match r {
            Ok((a, fh)) => reply.created(&TTL, &file_attr(&a), 0, fh, 0),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        off: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = offset(off).and_then(|off| {
            let len = offset(length)?;
            self.model().fallocate(ino, off, len, mode)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
