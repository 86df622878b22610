//! The in-memory durability model. It knows nothing about FUSE: every
//! filesystem operation is a plain method, so the model can be tested
//! directly (see the tests at the bottom of this file).
//!
//! Each file has a *live* content (what reads see), a *durable* content (what
//! would survive a power cut) and the list of data operations (writes, size
//! changes) made since its last `fsync`. Each directory has *live* entries, *durable*
//! entries and the list of entry operations (insert name → inode, remove name)
//! made since its last `fsync`. A successful `fsync` replays the pending list
//! onto the durable side and clears it; a failed `fsync` (see
//! [`Model::fail_fsync`]) clears it without replaying, so what it covered is
//! lost for good from the durable side (it stays in the live view).
//!
//! Errors are reported like Linux's `errseq` (since 4.13): each inode has an
//! error sequence number, bumped by every failed `fsync` of it, and each open
//! handle ([`Fh`], one per `open`, i.e. per open file description) samples it
//! at open. An `fsync` through a handle whose sample is older than its
//! inode's sequence returns `EIO` once (after making the pending operations
//! durable as usual) and catches the sample up. See [`Model::fsync`].
//!
//! Inode numbers and handle numbers are never reused. An inode is dropped
//! from memory once nothing can reach it any more: no live or durable entry,
//! no pending insertion, no kernel lookup reference and no open handle.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::rng::Rng;
use crate::tree::Tree;

/// An inode number. The root directory is [`ROOT_INO`].
pub type Ino = u64;

/// The inode number of the root directory (as FUSE requires).
pub const ROOT_INO: Ino = 1;

/// The largest file size the model accepts (writes or truncations past it
/// fail with `EFBIG`): contents are kept in memory.
pub const MAX_FILE_SIZE: u64 = 1 << 30;

const MAX_NAME_LEN: usize = 255;

/// An open handle: one open file description (the FUSE `fh`), returned by
/// [`Model::open`]. Never 0; never reused.
pub type Fh = u64;

/// An `errno` value (`libc::ENOENT`, `libc::EIO`, ...).
pub type Errno = i32;

/// The result of a model operation: a value or an `errno`.
pub type OpResult<T> = Result<T, Errno>;

/// `renameat2` flag: fail with `EEXIST` instead of replacing the target.
pub const RENAME_NOREPLACE: u32 = 1;

/// The kind of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// The attributes of an inode, as `getattr` reports them (live view).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// File or directory.
    pub kind: NodeKind,
    /// Live size in bytes (4096 for directories).
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Live link count (0 once unlinked).
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
}

/// Attribute changes for [`Model::setattr`]; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub perm: Option<u16>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size: a truncation or extension, which is a data operation
    /// (durable only after `fsync`).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SystemTime>,
    /// New modification time.
    pub mtime: Option<SystemTime>,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's inode.
    pub ino: Ino,
    /// File or directory.
    pub kind: NodeKind,
    /// The entry's name (`.` and `..` included).
    pub name: OsString,
}

/// What a torn power cut did: a prefix of one pending write was applied to
/// the durable content of its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornWrite {
    /// The file's path in the durable tree, relative to the root.
    pub path: PathBuf,
    /// The offset of the write.
    pub offset: u64,
    /// The full length of the write.
    pub len: usize,
    /// How many of its first bytes were applied (`0..=len`).
    pub applied: usize,
}

/// Counters of what the model has seen since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Non-empty writes.
    pub writes: u64,
    /// `fsync`/`fdatasync` calls on files (failed ones included).
    pub file_fsyncs: u64,
    /// `fsync` calls on directories (failed ones included).
    pub dir_fsyncs: u64,
    /// `fsync` calls made to fail by [`Model::fail_fsync`].
    pub failed_fsyncs: u64,
    /// `fsync` calls that made their pending operations durable but returned
    /// `EIO` to report, through their handle, an earlier failed fsync of the
    /// same inode (see [`Model::fsync`]). Not counted in `failed_fsyncs`.
    pub reported_fsync_errors: u64,
}

/// The life stage of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Operations are served.
    Running,
    /// A power cut happened: every operation fails with `EIO`.
    Cut,
    /// A clean shutdown happened: every operation fails with `EIO`.
    ShutDown,
}

#[derive(Clone, Debug)]
enum DataOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl DataOp {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            DataOp::Write { offset, data } => write_at(content, *offset, data),
            DataOp::SetLen(len) => content.resize(*len as usize, 0),
        }
    }
}

#[derive(Clone, Debug)]
enum DirOp {
    Insert(OsString, Ino),
    Remove(OsString),
}

impl DirOp {
    fn apply(&self, entries: &mut BTreeMap<OsString, Ino>) {
        match self {
            DirOp::Insert(name, ino) => {
                entries.insert(name.clone(), *ino);
            }
            DirOp::Remove(name) => {
                entries.remove(name);
            }
        }
    }
}

#[derive(Debug)]
struct FileData {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<DataOp>,
}

#[derive(Debug)]
struct DirData {
    live: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
    pending: Vec<DirOp>,
    /// The live parent (the root is its own parent).
    parent: Ino,
}

#[derive(Debug)]
enum Content {
    File(FileData),
    Dir(DirData),
}

#[derive(Debug)]
struct Node {
    content: Content,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Live entries naming this inode (0 or 1: no hard links); the root
    /// always has 1.
    links: u32,
    /// The kernel's lookup count (FUSE `forget` lowers it).
    lookups: u64,
    /// Error sequence number (Linux: the mapping's `wb_err`): how many
    /// fsyncs of this inode failed. Handles sample it at open.
    err_seq: u64,
}

impl Node {
    fn new(content: Content, perm: u16, uid: u32, gid: u32) -> Node {
        let now = SystemTime::now();
        Node {
            content,
            perm: perm & 0o7777,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            links: 1,
            lookups: 0,
            err_seq: 0,
        }
    }

    fn kind(&self) -> NodeKind {
        match self.content {
            Content::File(_) => NodeKind::File,
            Content::Dir(_) => NodeKind::Dir,
        }
    }
}

/// Writes `data` at `offset`, zero-filling any gap past the end.
fn write_at(content: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    let end = start + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[start..end].copy_from_slice(data);
}

fn check_name(name: &OsStr) -> OpResult<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(libc::EINVAL);
    }
    if bytes.len() > MAX_NAME_LEN {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    Live,
    Durable,
}

/// An open file description.
#[derive(Clone, Copy, Debug)]
struct Handle {
    ino: Ino,
    /// The inode's `err_seq` as of the open or of the last `fsync` through
    /// this handle (Linux: the file's `f_wb_err`).
    err_seen: u64,
}

/// The whole filesystem: live view, durable view, pending operations and
/// open handles. See the module documentation.
#[derive(Debug)]
pub struct Model {
    nodes: BTreeMap<Ino, Node>,
    next_ino: Ino,
    handles: BTreeMap<Fh, Handle>,
    next_fh: Fh,
    state: State,
    /// 0: no failure armed; n: the n-th next fsync fails.
    fail_countdown: u64,
    stats: Stats,
    gc_needed: bool,
}

impl Default for Model {
    fn default() -> Model {
        Model::new()
    }
}

impl Model {
    /// An empty filesystem: a root directory (mode 0755) with nothing in it.
    pub fn new() -> Model {
        let root = Node::new(
            Content::Dir(DirData {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
                pending: Vec::new(),
                parent: ROOT_INO,
            }),
            0o755,
            0,
            0,
        );
        Model {
            nodes: BTreeMap::from([(ROOT_INO, root)]),
            next_ino: ROOT_INO + 1,
            handles: BTreeMap::new(),
            next_fh: 1,
            state: State::Running,
            fail_countdown: 0,
            stats: Stats::default(),
            gc_needed: false,
        }
    }

    /// A filesystem holding `tree` (which must be a [`Tree::Dir`]), all of it
    /// durable (no pending operation).
    pub fn from_tree(tree: &Tree) -> Option<Model> {
        let Tree::Dir { entries, perm } = tree else {
            return None;
        };
        let mut model = Model::new();
        if let Some(root) = model.nodes.get_mut(&ROOT_INO) {
            root.perm = *perm & 0o7777;
        }
        model.load_entries(ROOT_INO, entries);
        Some(model)
    }

    fn load_entries(&mut self, dir: Ino, entries: &BTreeMap<OsString, Tree>) {
        for (name, tree) in entries {
            let ino = self.next_ino;
            self.next_ino += 1;
            let node = match tree {
                Tree::File { data, perm } => Node::new(
                    Content::File(FileData {
                        live: data.clone(),
                        durable: data.clone(),
                        pending: Vec::new(),
                    }),
                    *perm,
                    0,
                    0,
                ),
                Tree::Dir { perm, .. } => Node::new(
                    Content::Dir(DirData {
                        live: BTreeMap::new(),
                        durable: BTreeMap::new(),
                        pending: Vec::new(),
                        parent: dir,
                    }),
                    *perm,
                    0,
                    0,
                ),
            };
            self.nodes.insert(ino, node);
            if let Some(Content::Dir(d)) = self.nodes.get_mut(&dir).map(|n| &mut n.content) {
                d.live.insert(name.clone(), ino);
                d.durable.insert(name.clone(), ino);
            }
            if let Tree::Dir { entries, .. } = tree {
                self.load_entries(ino, entries);
            }
        }
    }

    /// The model's life stage.
    pub fn state(&self) -> State {
        self.state
    }

    /// Counters of operations seen so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ----- helpers -------------------------------------------------------

    fn running(&self) -> OpResult<()> {
        if self.state == State::Running {
            Ok(())
        } else {
            Err(libc::EIO)
        }
    }

    fn node(&self, ino: Ino) -> OpResult<&Node> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> OpResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> OpResult<&DirData> {
        match &self.node(ino)?.content {
            Content::Dir(d) => Ok(d),
            Content::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> OpResult<&mut DirData> {
        match &mut self.node_mut(ino)?.content {
            Content::Dir(d) => Ok(d),
            Content::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn is_dir(&self, ino: Ino) -> bool {
        matches!(
            self.nodes.get(&ino).map(|n| &n.content),
            Some(Content::Dir(_))
        )
    }

    /// A live directory that may receive new entries (not removed).
    fn live_dir(&self, ino: Ino) -> OpResult<&DirData> {
        let d = self.dir(ino)?;
        if self.node(ino)?.links == 0 {
            return Err(libc::ENOENT);
        }
        Ok(d)
    }

    fn touch_dir(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            let now = SystemTime::now();
            n.mtime = now;
            n.ctime = now;
        }
    }

    /// The live attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> OpResult<Attr> {
        self.running()?;
        self.attr(ino)
    }

    fn attr(&self, ino: Ino) -> OpResult<Attr> {
        let n = self.node(ino)?;
        let (size, nlink) = match &n.content {
            Content::File(f) => (f.live.len() as u64, n.links),
            Content::Dir(d) => {
                let subdirs = d.live.values().filter(|i| self.is_dir(**i)).count() as u32;
                (4096, if n.links == 0 { 0 } else { 2 + subdirs })
            }
        };
        Ok(Attr {
            ino,
            kind: n.kind(),
            size,
            perm: n.perm,
            nlink,
            uid: n.uid,
            gid: n.gid,
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
        })
    }

    // ----- names ---------------------------------------------------------

    /// Looks `name` up in directory `parent` (live view) and counts one
    /// kernel reference to the result (undone by [`Model::forget`]).
    pub fn lookup(&mut self, parent: Ino, name: &OsStr) -> OpResult<Attr> {
        self.running()?;
        if name.len() > MAX_NAME_LEN {
            return Err(libc::ENAMETOOLONG);
        }
        let d = self.dir(parent)?;
        let ino = match name.as_bytes() {
            b"." => parent,
            b".." => d.parent,
            _ => *d.live.get(name).ok_or(libc::ENOENT)?,
        };
        self.node_mut(ino)?.lookups += 1;
        self.attr(ino)
    }

    /// Drops `n` kernel references to `ino` (FUSE `forget`).
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 && node.links == 0 {
                self.gc_needed = true;
                self.gc();
            }
        }
    }

    fn new_entry(
        &mut self,
        parent: Ino,
        name: &OsStr,
        content: Content,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> OpResult<Attr> {
        self.running()?;
        check_name(name)?;
        if self.live_dir(parent)?.live.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut node = Node::new(content, perm, uid, gid);
        node.lookups = 1;
        self.nodes.insert(ino, node);
        let d = self.dir_mut(parent)?;
        d.live.insert(name.to_owned(), ino);
        d.pending.push(DirOp::Insert(name.to_owned(), ino));
        self.touch_dir(parent);
        self.attr(ino)
    }

    /// Creates an empty regular file `name` in `parent` (`EEXIST` if the
    /// name is taken). Counts one kernel reference, like [`Model::lookup`].
    /// The new entry is durable only after `parent` is fsynced.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> OpResult<Attr> {
        let content = Content::File(FileData {
            live: Vec::new(),
            durable: Vec::new(),
            pending: Vec::new(),
        });
        self.new_entry(parent, name, content, perm, uid, gid)
    }

    /// Creates an empty directory `name` in `parent`. Counts one kernel
    /// reference. The new entry is durable only after `parent` is fsynced.
    pub fn mkdir(
        &mut self,
        parent: Ino,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> OpResult<Attr> {
        let content = Content::Dir(DirData {
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
            pending: Vec::new(),
            parent,
        });
        self.new_entry(parent, name, content, perm, uid, gid)
    }

    /// Removes the file entry `name` from `parent` (`EISDIR` for a
    /// directory). The removal is durable only after `parent` is fsynced.
    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> OpResult<()> {
        self.running()?;
        let ino = *self.dir(parent)?.live.get(name).ok_or(libc::ENOENT)?;
        if self.is_dir(ino) {
            return Err(libc::EISDIR);
        }
        self.remove_entry(parent, name, ino);
        Ok(())
    }

    /// Removes the empty directory `name` from `parent` (`ENOTDIR`,
    /// `ENOTEMPTY`). The removal is durable only after `parent` is fsynced.
    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> OpResult<()> {
        self.running()?;
        let ino = *self.dir(parent)?.live.get(name).ok_or(libc::ENOENT)?;
        if !self.dir(ino)?.live.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.remove_entry(parent, name, ino);
        Ok(())
    }

    fn remove_entry(&mut self, parent: Ino, name: &OsStr, ino: Ino) {
        if let Ok(d) = self.dir_mut(parent) {
            d.live.remove(name);
            d.pending.push(DirOp::Remove(name.to_owned()));
        }
        self.touch_dir(parent);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.links = n.links.saturating_sub(1);
            n.ctime = SystemTime::now();
        }
        self.gc_needed = true;
        self.gc();
    }

    /// Renames `parent/name` to `newparent/newname`, replacing a file or an
    /// empty directory there. The removal of the old name becomes durable
    /// when `parent` is fsynced, the new name when `newparent` is fsynced
    /// (independently: see the crate documentation). `flags` may hold
    /// [`RENAME_NOREPLACE`]; any other flag gives `EINVAL`.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> OpResult<()> {
        self.running()?;
        check_name(newname)?;
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(libc::EINVAL);
        }
        let ino = *self.dir(parent)?.live.get(name).ok_or(libc::ENOENT)?;
        let target = self.live_dir(newparent)?.live.get(newname).copied();
        if target == Some(ino) {
            return Ok(());
        }
        let src_is_dir = self.is_dir(ino);
        if let Some(t) = target {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(libc::EEXIST);
            }
            match (src_is_dir, self.is_dir(t)) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !self.dir(t)?.live.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        if src_is_dir {
            // newparent must not be the moved directory or inside it.
            let mut cur = newparent;
            for _ in 0..=self.nodes.len() {
                if cur == ino {
                    return Err(libc::EINVAL);
                }
                if cur == ROOT_INO {
                    break;
                }
                cur = self.dir(cur)?.parent;
            }
        }
        let d = self.dir_mut(parent)?;
        d.live.remove(name);
        d.pending.push(DirOp::Remove(name.to_owned()));
        if let Some(t) = target {
            if let Some(n) = self.nodes.get_mut(&t) {
                n.links = n.links.saturating_sub(1);
                n.ctime = SystemTime::now();
            }
            self.gc_needed = true;
        }
        let nd = self.dir_mut(newparent)?;
        nd.live.insert(newname.to_owned(), ino);
        nd.pending.push(DirOp::Insert(newname.to_owned(), ino));
        if src_is_dir {
            self.dir_mut(ino)?.parent = newparent;
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.ctime = SystemTime::now();
        }
        self.touch_dir(parent);
        self.touch_dir(newparent);
        self.gc();
        Ok(())
    }

    /// The live entries of directory `ino`, `.` and `..` first, then by
    /// name.
    pub fn readdir(&self, ino: Ino) -> OpResult<Vec<DirEntry>> {
        self.running()?;
        let d = self.dir(ino)?;
        let mut out = vec![
            DirEntry {
                ino,
                kind: NodeKind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: d.parent,
                kind: NodeKind::Dir,
                name: "..".into(),
            },
        ];
        for (name, child) in &d.live {
            if let Ok(n) = self.node(*child) {
                out.push(DirEntry {
                    ino: *child,
                    kind: n.kind(),
                    name: name.clone(),
                });
            }
        }
        Ok(out)
    }

    // ----- handles -------------------------------------------------------

    /// Opens a new handle (an open file description) on `ino` and returns
    /// its number, distinct from every other handle's and never 0; `dir`
    /// says whether a directory is expected (`ENOTDIR`/`EISDIR` otherwise).
    /// The handle samples the inode's error sequence: fsyncs that failed
    /// before this open are never reported through it.
    pub fn open(&mut self, ino: Ino, dir: bool) -> OpResult<Fh> {
        self.running()?;
        let n = self.node(ino)?;
        match (n.kind(), dir) {
            (NodeKind::File, true) => return Err(libc::ENOTDIR),
            (NodeKind::Dir, false) => return Err(libc::EISDIR),
            _ => {}
        }
        let err_seen = n.err_seq;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, err_seen });
        Ok(fh)
    }

    /// Closes handle `fh` (FUSE `release`/`releasedir`). An unknown `fh` is
    /// ignored. Works in every state (also after a cut or shutdown).
    pub fn release(&mut self, fh: Fh) {
        let Some(h) = self.handles.remove(&fh) else {
            return;
        };
        let unreferenced = self
            .nodes
            .get(&h.ino)
            .is_some_and(|n| n.links == 0 && n.lookups == 0);
        if unreferenced && !self.handles.values().any(|o| o.ino == h.ino) {
            self.gc_needed = true;
            self.gc();
        }
    }

    /// The number of open handles.
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    // ----- data ----------------------------------------------------------

    fn file_node_mut(&mut self, ino: Ino) -> OpResult<(&mut FileData, &mut SystemTime)> {
        let n = self.node_mut(ino)?;
        match &mut n.content {
            Content::File(f) => Ok((f, &mut n.mtime)),
            Content::Dir(_) => Err(libc::EISDIR),
        }
    }

    /// Up to `size` bytes of the live content of `ino` from `offset`
    /// (short or empty at the end of the file).
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> OpResult<&[u8]> {
        self.running()?;
        match &self.node(ino)?.content {
            Content::File(f) => {
                let len = f.live.len() as u64;
                let start = offset.min(len) as usize;
                let end = offset.saturating_add(u64::from(size)).min(len) as usize;
                Ok(&f.live[start..end])
            }
            Content::Dir(_) => Err(libc::EISDIR),
        }
    }

    /// Writes `data` at `offset` into `ino`: visible at once, durable after
    /// the file's next successful `fsync`. Returns the length written.
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> OpResult<u32> {
        self.running()?;
        let len = u32::try_from(data.len()).map_err(|_| libc::EINVAL)?;
        offset
            .checked_add(u64::from(len))
            .filter(|end| *end <= MAX_FILE_SIZE)
            .ok_or(libc::EFBIG)?;
        let (f, mtime) = self.file_node_mut(ino)?;
        if data.is_empty() {
            return Ok(0);
        }
        write_at(&mut f.live, offset, data);
        f.pending.push(DataOp::Write {
            offset,
            data: data.to_vec(),
        });
        *mtime = SystemTime::now();
        self.stats.writes += 1;
        Ok(len)
    }

    /// Truncates or zero-extends `ino` to `len` bytes (durable after
    /// `fsync`).
    pub fn set_len(&mut self, ino: Ino, len: u64) -> OpResult<()> {
        self.running()?;
        if len > MAX_FILE_SIZE {
            return Err(libc::EFBIG);
        }
        let (f, mtime) = self.file_node_mut(ino)?;
        f.live.resize(len as usize, 0);
        f.pending.push(DataOp::SetLen(len));
        *mtime = SystemTime::now();
        Ok(())
    }

    /// `fallocate(2)`: mode 0 extends the size to `offset + len` if smaller;
    /// `FALLOC_FL_KEEP_SIZE` alone is a no-op (space is not modelled);
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` and
    /// `FALLOC_FL_ZERO_RANGE` (with or without `KEEP_SIZE`) write zeros.
    /// Everything else is `EOPNOTSUPP`. Like writes, durable after `fsync`.
    pub fn fallocate(&mut self, ino: Ino, offset: u64, len: u64, mode: i32) -> OpResult<()> {
        self.running()?;
        if len == 0 {
            return Err(libc::EINVAL);
        }
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or(libc::EFBIG)?;
        let size = match &self.node(ino)?.content {
            Content::File(f) => f.live.len() as u64,
            Content::Dir(_) => return Err(libc::EISDIR),
        };
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero_end = |keep: bool| if keep { end.min(size) } else { end };
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => {
                if !keep && end > size {
                    self.set_len(ino, end)?;
                }
                Ok(())
            }
            libc::FALLOC_FL_PUNCH_HOLE if keep => self.write_zeros(ino, offset, zero_end(true)),
            libc::FALLOC_FL_ZERO_RANGE => self.write_zeros(ino, offset, zero_end(keep)),
            _ => Err(libc::EOPNOTSUPP),
        }
    }

    fn write_zeros(&mut self, ino: Ino, start: u64, end: u64) -> OpResult<()> {
        if end > start {
            self.write(ino, start, &vec![0; (end - start) as usize])?;
        }
        Ok(())
    }

    /// Changes attributes. A size change is a data operation (like
    /// [`Model::set_len`]); permission bits, owners and times apply at once
    /// and are not part of the durability model.
    pub fn setattr(&mut self, ino: Ino, change: SetAttr) -> OpResult<Attr> {
        self.running()?;
        self.node(ino)?;
        if let Some(size) = change.size {
            self.set_len(ino, size)?;
        }
        let n = self.node_mut(ino)?;
        if let Some(perm) = change.perm {
            n.perm = perm & 0o7777;
        }
        if let Some(uid) = change.uid {
            n.uid = uid;
        }
        if let Some(gid) = change.gid {
            n.gid = gid;
        }
        if let Some(t) = change.atime {
            n.atime = t;
        }
        if let Some(t) = change.mtime {
            n.mtime = t;
        }
        n.ctime = SystemTime::now();
        self.attr(ino)
    }

    // ----- durability ----------------------------------------------------

    /// Arms fsync failure injection: the `nth` next `fsync` (files and
    /// directories counted together; 1 = the very next one) fails with
    /// `EIO` and drops the pending operations it covered. The failure is
    /// then also reported once to every other handle open on that inode at
    /// that moment (see [`Model::fsync`]). One-shot; 0 disarms.
    pub fn fail_fsync(&mut self, nth: u64) {
        self.fail_countdown = nth;
    }

    /// `fsync`/`fdatasync` of a file (its pending data operations become
    /// durable) or of a directory (its pending entry operations become
    /// durable), through handle `fh`.
    ///
    /// * If this is the failing fsync armed by [`Model::fail_fsync`], the
    ///   pending operations are dropped instead, the inode's error sequence
    ///   is bumped, `fh`'s sample is caught up (the error counts as
    ///   reported to this handle) and `EIO` is returned.
    /// * Otherwise the pending operations become durable; then, if `fh`'s
    ///   sample is older than the inode's error sequence (an fsync of this
    ///   inode failed since `fh` was opened or last fsynced), the sample is
    ///   caught up and `EIO` is returned: each failure is reported once to
    ///   every handle open when it happened, as Linux (4.13+) does per open
    ///   file description. Later fsyncs through `fh` succeed again.
    ///
    /// An `fh` the model does not know (0, say, or a handle of another
    /// inode) gets no per-handle report: only an armed failure makes its
    /// fsync fail.
    pub fn fsync(&mut self, ino: Ino, fh: Fh) -> OpResult<()> {
        self.running()?;
        self.node(ino)?;
        let fail = if self.fail_countdown > 0 {
            self.fail_countdown -= 1;
            self.fail_countdown == 0
        } else {
            false
        };
        let node = self.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
        match &mut node.content {
            Content::File(f) => {
                self.stats.file_fsyncs += 1;
                let pending = std::mem::take(&mut f.pending);
                if !fail {
                    for op in &pending {
                        op.apply(&mut f.durable);
                    }
                }
            }
            Content::Dir(d) => {
                self.stats.dir_fsyncs += 1;
                let pending = std::mem::take(&mut d.pending);
                if !fail {
                    for op in &pending {
                        op.apply(&mut d.durable);
                    }
                }
                self.gc_needed = true;
            }
        }
        if fail {
            node.err_seq += 1;
        }
        let err_seq = node.err_seq;
        let unreported = match self.handles.get_mut(&fh).filter(|h| h.ino == ino) {
            Some(h) => std::mem::replace(&mut h.err_seen, err_seq) != err_seq,
            None => false,
        };
        self.gc();
        if fail {
            self.stats.failed_fsyncs += 1;
            return Err(libc::EIO);
        }
        if unreported {
            self.stats.reported_fsync_errors += 1;
            return Err(libc::EIO);
        }
        Ok(())
    }

    /// Power cut: from now on every operation fails with `EIO`. With
    /// `torn_seed`, first a random prefix (0..=len bytes) of one random
    /// pending write, among the files present in the durable tree, is
    /// applied to that file's durable content. Returns the durable tree and
    /// what was torn (`None` without a seed or without any candidate).
    /// `EIO` if the model was already cut or shut down.
    pub fn power_cut(&mut self, torn_seed: Option<u64>) -> OpResult<(Tree, Option<TornWrite>)> {
        self.running()?;
        let torn = torn_seed.and_then(|seed| self.tear(seed));
        self.state = State::Cut;
        Ok((self.durable_tree(), torn))
    }

    fn tear(&mut self, seed: u64) -> Option<TornWrite> {
        let paths = self.durable_file_paths();
        let mut candidates = Vec::new();
        for ino in paths.keys() {
            if let Some(Content::File(f)) = self.nodes.get(ino).map(|n| &n.content) {
                for (i, op) in f.pending.iter().enumerate() {
                    if matches!(op, DataOp::Write { .. }) {
                        candidates.push((*ino, i));
                    }
                }
            }
        }
        if candidates.is_empty() {
            return None;
        }
        let mut rng = Rng::new(seed);
        let (ino, i) = candidates[rng.below(candidates.len() as u64) as usize];
        let Some(Content::File(f)) = self.nodes.get_mut(&ino).map(|n| &mut n.content) else {
            return None;
        };
        let DataOp::Write { offset, data } = &f.pending[i] else {
            return None;
        };
        let applied = rng.below(data.len() as u64 + 1) as usize;
        if applied > 0 {
            write_at(&mut f.durable, *offset, &data[..applied]);
        }
        Some(TornWrite {
            path: paths[&ino].clone(),
            offset: *offset,
            len: data.len(),
            applied,
        })
    }

    /// Clean shutdown: every pending operation becomes durable (like an OS
    /// flushing its page cache), then every further operation fails with
    /// `EIO`. Returns the resulting durable tree, which equals the live tree
    /// unless a failed fsync dropped operations. `EIO` if already cut or
    /// shut down.
    pub fn shutdown(&mut self) -> OpResult<Tree> {
        self.running()?;
        for node in self.nodes.values_mut() {
            match &mut node.content {
                Content::File(f) => {
                    for op in std::mem::take(&mut f.pending) {
                        op.apply(&mut f.durable);
                    }
                }
                Content::Dir(d) => {
                    for op in std::mem::take(&mut d.pending) {
                        op.apply(&mut d.durable);
                    }
                }
            }
        }
        self.state = State::ShutDown;
        Ok(self.durable_tree())
    }

    /// What would survive a power cut now (no state change).
    pub fn durable_tree(&self) -> Tree {
        self.build(ROOT_INO, View::Durable, &mut HashSet::new())
            .unwrap_or_else(Tree::empty_dir)
    }

    /// What reads see now.
    pub fn live_tree(&self) -> Tree {
        self.build(ROOT_INO, View::Live, &mut HashSet::new())
            .unwrap_or_else(Tree::empty_dir)
    }

    /// The tree under `ino` in `view`. In the durable view a directory can
    /// be named twice (a cross-directory rename with only the target
    /// directory fsynced), even in a cycle; each directory is then emitted
    /// only at its first place in depth-first name order.
    fn build(&self, ino: Ino, view: View, seen_dirs: &mut HashSet<Ino>) -> Option<Tree> {
        let node = self.nodes.get(&ino)?;
        match &node.content {
            Content::File(f) => Some(Tree::File {
                data: match view {
                    View::Live => f.live.clone(),
                    View::Durable => f.durable.clone(),
                },
                perm: node.perm,
            }),
            Content::Dir(d) => {
                if !seen_dirs.insert(ino) {
                    return None;
                }
                let names = match view {
                    View::Live => &d.live,
                    View::Durable => &d.durable,
                };
                let mut entries = BTreeMap::new();
                for (name, child) in names {
                    if let Some(t) = self.build(*child, view, seen_dirs) {
                        entries.insert(name.clone(), t);
                    }
                }
                Some(Tree::Dir {
                    entries,
                    perm: node.perm,
                })
            }
        }
    }

    /// The first durable path of every file in the durable tree (same walk
    /// as [`Model::durable_tree`]).
    fn durable_file_paths(&self) -> BTreeMap<Ino, PathBuf> {
        fn walk(
            m: &Model,
            ino: Ino,
            path: PathBuf,
            seen: &mut HashSet<Ino>,
            out: &mut BTreeMap<Ino, PathBuf>,
        ) {
            match m.nodes.get(&ino).map(|n| &n.content) {
                Some(Content::File(_)) => {
                    out.entry(ino).or_insert(path);
                }
                Some(Content::Dir(d)) if seen.insert(ino) => {
                    for (name, child) in &d.durable {
                        walk(m, *child, path.join(name), seen, out);
                    }
                }
                Some(Content::Dir(_)) | None => {}
            }
        }
        let mut out = BTreeMap::new();
        walk(
            self,
            ROOT_INO,
            PathBuf::new(),
            &mut HashSet::new(),
            &mut out,
        );
        out
    }

    /// Forgets inodes nothing can reach any more.
    fn gc(&mut self) {
        if !self.gc_needed {
            return;
        }
        self.gc_needed = false;
        let mut stack: Vec<Ino> = vec![ROOT_INO];
        stack.extend(
            self.nodes
                .iter()
                .filter(|(_, n)| n.lookups > 0)
                .map(|(i, _)| *i),
        );
        stack.extend(self.handles.values().map(|h| h.ino));
        let mut marked = HashSet::new();
        while let Some(ino) = stack.pop() {
            if !marked.insert(ino) {
                continue;
            }
            if let Some(Content::Dir(d)) = self.nodes.get(&ino).map(|n| &n.content) {
                stack.extend(d.live.values());
                stack.extend(d.durable.values());
                for op in &d.pending {
                    if let DirOp::Insert(_, i) = op {
                        stack.push(*i);
                    }
                }
            }
        }
        self.nodes.retain(|ino, _| marked.contains(ino));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    /// A model with `dir/` durable, and helpers.
    fn new_file(m: &mut Model, parent: Ino, name: &str) -> Ino {
        m.create(parent, os(name), 0o644, 0, 0).unwrap().ino
    }

    #[test]
    fn write_without_fsync_is_lost() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        m.fsync(ROOT_INO, 0).unwrap();
        m.write(f, 0, b"hello").unwrap();
        assert_eq!(m.read(f, 0, 100).unwrap(), b"hello");
        let (tree, torn) = m.power_cut(None).unwrap();
        assert_eq!(torn, None);
        assert_eq!(tree.file("f"), Some(&b""[..]));
    }

    #[test]
    fn fsync_file_but_not_dir_loses_new_file() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        m.write(f, 0, b"data").unwrap();
        m.fsync(f, 0).unwrap();
        let (tree, _) = m.power_cut(None).unwrap();
        assert!(!tree.exists("f"));
    }

    #[test]
    fn fsync_dir_but_not_file_gives_empty_file() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        m.write(f, 0, b"data").unwrap();
        m.fsync(ROOT_INO, 0).unwrap();
        let (tree, _) = m.power_cut(None).unwrap();
        assert_eq!(tree.file("f"), Some(&b""[..]));
    }

    #[test]
    fn fsync_file_and_dir_keeps_everything_fsynced() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        m.write(f, 0, b"hello").unwrap();
        m.write(f, 10, b"world").unwrap();
        m.fsync(f, 0).unwrap();
        m.fsync(ROOT_INO, 0).unwrap();
        m.write(f, 0, b"HELLO").unwrap();
        let (tree, _) = m.power_cut(None).unwrap();
        assert_eq!(tree.file("f"), Some(&b"hello\0\0\0\0\0world"[..]));
    }

    #[test]
    fn nested_new_dirs_need_every_ancestor_fsynced() {
        let mut m = Model::new();
        let d = m.mkdir(ROOT_INO, os("d"), 0o755, 0, 0).unwrap().ino;
        let f = new_file(&mut m, d, "f");
        m.write(f, 0, b"x").unwrap();
        m.fsync(f, 0).unwrap();
        m.fsync(d, 0).unwrap();
        assert!(!m.durable_tree().exists("d"));
        m.fsync(ROOT_INO, 0).unwrap();
        assert_eq!(m.durable_tree().file("d/f"), Some(&b"x"[..]));
    }

    #[test]
    fn truncate_is_durable_only_after_fsync() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        m.write(f, 0, b"hello").unwrap();
        m.fsync(f, 0).unwrap();
        m.fsync(ROOT_INO, 0).unwrap();
        m.set_len(f, 2).unwrap();
        assert_eq!(m.getattr(f).unwrap().size, 2);
        assert_eq!(m.durable_tree().file("f"), Some(&b"hello"[..]));
        m.fsync(f, 0).unwrap();
        assert_eq!(m.durable_tree().file("f"), Some(&b"he"[..]));
    }

    #[test]
    fn rename_needs_dir_fsync() {
        let setup = || {
            let mut m = Model::new();
            let f = new_file(&mut m, ROOT_INO, "snap.tmp");
            m.write(f, 0, b"snapshot").unwrap();
            m.fsync(f, 0).unwrap();
            m.fsync(ROOT_INO, 0).unwrap();
            m.rename(ROOT_INO, os("snap.tmp"), ROOT_INO, os("snap"), 0)
                .unwrap();
            m
        };
        let mut m = setup();
        let (tree, _) = m.power_cut(None).unwrap();
        assert_eq!(tree.file("snap.tmp"), Some(&b"snapshot"[..]));
        assert!(!tree.exists("snap"));

        let mut m = setup();
        m.fsync(ROOT_INO, 0).unwrap();
        let (tree, _) = m.power_cut(None).unwrap();
        assert_eq!(tree.file("snap"), Some(&b"snapshot"[..]));
        assert!(!tree.exists("snap.tmp"));
    }

    #[test]
    fn rename_over_existing_file_keeps_old_until_dir_fsync() {
        let mut m = Model::new();
        let old = new_file(&mut m, ROOT_INO, "conf");
        m.write(old, 0, b"old").unwrap();
        let new = new_file(&mut m, ROOT_INO, "conf.tmp");
        m.write(new, 0, b"new").unwrap();
        m.fsync(old, 0).unwrap();
        m.fsync(new, 0).unwrap();
        m.fsync(ROOT_INO, 0).unwrap();
        m.rename(ROOT_INO, os("conf.tmp"), ROOT_INO, os("conf"), 0)
            .unwrap();
        assert_eq!(m.live_tree().file("conf"), Some(&b"new"[..]));
        assert_eq!(m.durable_tree().file("conf"), Some(&b"old"[..]));
        m.fsync(ROOT_INO, 0).unwrap();
        assert_eq!(m.durable_tree().file("conf"), Some(&b"new"[..]));
        assert!(!m.durable_tree().exists("conf.tmp"));
    }

    #[test]
    fn cross_dir_rename_halves_are_independent() {
        let setup = || {
            let mut m = Model::new();
            let a = m.mkdir(ROOT_INO, os("a"), 0o755, 0, 0).unwrap().ino;
            let b = m.mkdir(ROOT_INO, os("b"), 0o755, 0, 0).unwrap().ino;
            let f = new_file(&mut m, a, "f");
            m.write(f, 0, b"x").unwrap();
            for ino in [f, a, b, ROOT_INO] {
                m.fsync(ino, 0).unwrap();
            }
            m.rename(a, os("f"), b, os("g"), 0).unwrap();
            (m, a, b)
        };
        // Only the source fsynced: the file is in neither directory.
        let (mut m, a, _) = setup();
        m.fsync(a, 0).unwrap();
        let t = m.durable_tree();
        assert!(!t.exists("a/f") && !t.exists("b/g"));
        // Only the target fsynced: the file is in both.
        let (mut m, _, b) = setup();
        m.fsync(b, 0).unwrap();
        let t = m.durable_tree();
        assert_eq!(t.file("a/f"), Some(&b"x"[..]));
        assert_eq!(t.file("b/g"), Some(&b"x"[..]));
        // Both: moved.
        let (mut m, a, b) = setup();
        m.fsync(a, 0).unwrap();
        m.fsync(b, 0).unwrap();
        let t = m.durable_tree();
        assert!(!t.exists("a/f"));
        assert_eq!(t.file("b/g"), Some(&b"x"[..]));
    }

    #[test]
    fn durable_cycle_from_half_durable_renames_terminates() {
        let mut m = Model::new();
        let a = m.mkdir(ROOT_INO, os("a"), 0o755, 0, 0).unwrap().ino;
        let b = m.mkdir(a, os("b"), 0o755, 0, 0).unwrap().ino;
        for ino in [b, a, ROOT_INO] {
            m.fsync(ino, 0).unwrap();
        }
        // Live: /b, /b/a. Durable with only b fsynced: /a/b/a/... (cycle).
        m.rename(a, os("b"), ROOT_INO, os("b"), 0).unwrap();
        m.rename(ROOT_INO, os("a"), b, os("a"), 0).unwrap();
        m.fsync(b, 0).unwrap();
        let t = m.durable_tree();
        assert!(t.exists("a/b"));
        assert!(!t.exists("a/b/a"));
        let live = m.live_tree();
        assert!(live.exists("b/a") && !live.exists("a"));
    }

    #[test]
    fn unlink_is_durable_only_after_dir_fsync() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        m.write(f, 0, b"keep").unwrap();
        m.fsync(f, 0).unwrap();
        m.fsync(ROOT_INO, 0).unwrap();
        m.unlink(ROOT_INO, os("f")).unwrap();
        assert!(!m.live_tree().exists("f"));
        assert_eq!(m.durable_tree().file("f"), Some(&b"keep"[..]));
        m.fsync(ROOT_INO, 0).unwrap();
        assert!(!m.durable_tree().exists("f"));
    }

    #[test]
    fn rmdir_is_durable_only_after_parent_fsync() {
        let mut m = Model::new();
        let d = m.mkdir(ROOT_INO, os("d"), 0o755, 0, 0).unwrap().ino;
        let f = new_file(&mut m, d, "f");
        for ino in [f, d, ROOT_INO] {
            m.fsync(ino, 0).unwrap();
        }
        assert_eq!(m.rmdir(ROOT_INO, os("d")), Err(libc::ENOTEMPTY));
        m.unlink(d, os("f")).unwrap();
        m.rmdir(ROOT_INO, os("d")).unwrap();
        // Neither directory fsynced: d and d/f are still durable.
        assert!(m.durable_tree().exists("d/f"));
        m.fsync(ROOT_INO, 0).unwrap();
        assert!(!m.durable_tree().exists("d"));
    }

    #[test]
    fn torn_cut_applies_a_prefix_of_one_pending_write() {
        let data: Vec<u8> = (1..=200u8).collect();
        let run = |seed: u64| {
            let mut m = Model::new();
            let f = new_file(&mut m, ROOT_INO, "log");
            m.write(f, 0, b"base").unwrap();
            m.fsync(f, 0).unwrap();
            m.fsync(ROOT_INO, 0).unwrap();
            m.write(f, 4, &data).unwrap();
            let (tree, torn) = m.power_cut(Some(seed)).unwrap();
            (tree.file("log").unwrap().to_vec(), torn.unwrap())
        };
        let mut lengths = std::collections::BTreeSet::new();
        for seed in 0..40 {
            let (content, torn) = run(seed);
            assert_eq!(torn.path, PathBuf::from("log"));
            assert_eq!((torn.offset, torn.len), (4, 200));
            let mut want = b"base".to_vec();
            want.extend_from_slice(&data[..torn.applied]);
            assert_eq!(content, want, "seed {seed}");
            lengths.insert(torn.applied);
            assert_eq!(run(seed), (content, torn), "same seed, same cut");
        }
        assert!(lengths.len() > 10, "prefix lengths vary: {lengths:?}");
    }

    #[test]
    fn torn_cut_ignores_files_missing_from_durable_tree() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "new");
        m.write(f, 0, b"never linked").unwrap();
        let (tree, torn) = m.power_cut(Some(1)).unwrap();
        assert_eq!(torn, None);
        assert!(!tree.exists("new"));
    }

    #[test]
    fn torn_cut_picks_among_all_pending_writes() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..30 {
            let mut m = Model::new();
            let a = new_file(&mut m, ROOT_INO, "a");
            let b = new_file(&mut m, ROOT_INO, "b");
            m.fsync(ROOT_INO, 0).unwrap();
            m.write(a, 0, b"aaaa").unwrap();
            m.write(b, 0, b"bbbb").unwrap();
            m.write(b, 4, b"cccc").unwrap();
            let (_, torn) = m.power_cut(Some(seed)).unwrap();
            let torn = torn.unwrap();
            seen.insert((torn.path, torn.offset));
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[test]
    fn failed_fsync_does_not_persist_and_loses_the_data() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        m.fsync(ROOT_INO, 0).unwrap();
        m.fail_fsync(2);
        m.write(f, 0, b"one").unwrap();
        m.fsync(f, 0).unwrap(); // 1st: fine
        m.write(f, 3, b"two").unwrap();
        assert_eq!(m.fsync(f, 0), Err(libc::EIO)); // 2nd: fails
        assert_eq!(m.stats().failed_fsyncs, 1);
        // Still in the live view, not durable, and a later fsync does not
        // bring it back.
        assert_eq!(m.read(f, 0, 10).unwrap(), b"onetwo");
        m.fsync(f, 0).unwrap();
        assert_eq!(m.durable_tree().file("f"), Some(&b"one"[..]));
        // Nor does a clean shutdown.
        assert_eq!(m.shutdown().unwrap().file("f"), Some(&b"one"[..]));
    }

    #[test]
    fn failed_dir_fsync_drops_pending_entries() {
        let mut m = Model::new();
        new_file(&mut m, ROOT_INO, "f");
        m.fail_fsync(1);
        assert_eq!(m.fsync(ROOT_INO, 0), Err(libc::EIO));
        m.fsync(ROOT_INO, 0).unwrap();
        assert!(!m.durable_tree().exists("f"));
        assert!(m.live_tree().exists("f"));
    }

    #[test]
    fn failed_fsync_is_reported_once_to_every_open_handle() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        m.fsync(ROOT_INO, 0).unwrap();
        let a = m.open(f, false).unwrap();
        let b = m.open(f, false).unwrap();
        assert!(a != 0 && b != 0 && a != b, "distinct non-zero handles");
        m.write(f, 0, b"lost").unwrap();
        m.fail_fsync(1);
        assert_eq!(m.fsync(f, a), Err(libc::EIO));
        assert_eq!(m.durable_tree().file("f"), Some(&b""[..]));
        // Reported to A by the failing fsync itself: A's next fsync is fine.
        m.fsync(f, a).unwrap();
        // A write made after the failure, before B's fsync.
        m.write(f, 4, b"kept").unwrap();
        assert_eq!(m.fsync(f, b), Err(libc::EIO), "B sees the error once");
        assert_eq!(
            m.durable_tree().file("f"),
            Some(&b"\0\0\0\0kept"[..]),
            "B's reporting fsync still made the newer write durable"
        );
        m.fsync(f, b).unwrap();
        // C, opened after the failure, never sees it.
        let c = m.open(f, false).unwrap();
        m.fsync(f, c).unwrap();
        let stats = m.stats();
        assert_eq!((stats.failed_fsyncs, stats.reported_fsync_errors), (1, 1));
        assert_eq!(stats.file_fsyncs, 5);
        // A second failure, through C, is reported again to A and B.
        m.write(f, 8, b"gone").unwrap();
        m.fail_fsync(1);
        assert_eq!(m.fsync(f, c), Err(libc::EIO));
        m.fsync(f, c).unwrap();
        assert_eq!(m.fsync(f, a), Err(libc::EIO));
        assert_eq!(m.fsync(f, b), Err(libc::EIO));
        m.fsync(f, a).unwrap();
        m.fsync(f, b).unwrap();
        assert_eq!(m.stats().reported_fsync_errors, 3);
        assert_eq!(m.read(f, 0, 20).unwrap(), b"lostkeptgone");
        assert_eq!(m.shutdown().unwrap().file("f"), Some(&b"\0\0\0\0kept"[..]));
    }

    #[test]
    fn several_failures_before_a_handle_fsyncs_are_reported_once() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        let a = m.open(f, false).unwrap();
        let b = m.open(f, false).unwrap();
        for _ in 0..3 {
            m.fail_fsync(1);
            assert_eq!(m.fsync(f, a), Err(libc::EIO));
        }
        assert_eq!(m.fsync(f, b), Err(libc::EIO));
        m.fsync(f, b).unwrap();
        m.fsync(f, a).unwrap();
    }

    #[test]
    fn failed_dir_fsync_is_reported_once_to_every_open_handle() {
        let mut m = Model::new();
        let d = m.mkdir(ROOT_INO, os("d"), 0o755, 0, 0).unwrap().ino;
        m.fsync(ROOT_INO, 0).unwrap();
        let a = m.open(d, true).unwrap();
        let b = m.open(d, true).unwrap();
        assert!(a != 0 && b != 0 && a != b);
        new_file(&mut m, d, "lost");
        m.fail_fsync(1);
        assert_eq!(m.fsync(d, a), Err(libc::EIO));
        assert!(!m.durable_tree().exists("d/lost"));
        m.fsync(d, a).unwrap();
        new_file(&mut m, d, "kept");
        assert_eq!(m.fsync(d, b), Err(libc::EIO), "B sees the error once");
        let t = m.durable_tree();
        assert!(t.exists("d/kept"), "B's fsync made the newer entry durable");
        assert!(!t.exists("d/lost"));
        m.fsync(d, b).unwrap();
        let c = m.open(d, true).unwrap();
        m.fsync(d, c).unwrap();
        let stats = m.stats();
        assert_eq!((stats.failed_fsyncs, stats.reported_fsync_errors), (1, 1));
        assert_eq!(stats.dir_fsyncs, 6);
        // Another directory's handle is unaffected.
        let root = m.open(ROOT_INO, true).unwrap();
        m.fsync(ROOT_INO, root).unwrap();
    }

    #[test]
    fn unknown_or_foreign_handles_get_no_late_error() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        let g = new_file(&mut m, ROOT_INO, "g");
        let on_g = m.open(g, false).unwrap();
        m.fail_fsync(1);
        assert_eq!(m.fsync(f, 0), Err(libc::EIO), "the armed failure itself");
        // fh 0, a never-issued fh and a handle of another inode: as before
        // per-handle reporting, no error.
        m.fsync(f, 0).unwrap();
        m.fsync(f, 12345).unwrap();
        m.fsync(f, on_g).unwrap();
        m.fsync(g, on_g).unwrap();
        // Releasing unknown handles (twice, too) is harmless.
        m.release(0);
        m.release(12345);
        m.release(on_g);
        m.release(on_g);
        assert_eq!(m.open_handles(), 0);
        // A released handle number is not reused.
        assert!(m.open(f, false).unwrap() > on_g);
    }

    #[test]
    fn unlinked_inode_lives_until_its_last_handle_is_released() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        m.forget(f, 1);
        let a = m.open(f, false).unwrap();
        let b = m.open(f, false).unwrap();
        m.unlink(ROOT_INO, os("f")).unwrap();
        m.fsync(ROOT_INO, 0).unwrap();
        m.release(a);
        assert!(m.nodes.contains_key(&f), "b still open");
        m.write(f, 0, b"x").unwrap();
        m.fail_fsync(1);
        assert_eq!(m.fsync(f, b), Err(libc::EIO));
        m.release(b);
        assert!(!m.nodes.contains_key(&f));
        assert_eq!(m.fsync(f, b), Err(libc::ENOENT));
    }

    #[test]
    fn fail_fsync_zero_disarms() {
        let mut m = Model::new();
        m.fail_fsync(1);
        m.fail_fsync(0);
        m.fsync(ROOT_INO, 0).unwrap();
    }

    #[test]
    fn clean_shutdown_makes_live_durable() {
        let mut m = Model::new();
        let d = m.mkdir(ROOT_INO, os("d"), 0o700, 0, 0).unwrap().ino;
        let f = new_file(&mut m, d, "f");
        m.write(f, 0, b"abc").unwrap();
        new_file(&mut m, ROOT_INO, "gone");
        m.unlink(ROOT_INO, os("gone")).unwrap();
        let live = m.live_tree();
        assert_eq!(m.shutdown().unwrap(), live);
        assert_eq!(m.write(f, 0, b"x"), Err(libc::EIO));
        assert_eq!(m.shutdown(), Err(libc::EIO));
    }

    #[test]
    fn everything_fails_after_power_cut() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        m.power_cut(None).unwrap();
        assert_eq!(m.state(), State::Cut);
        assert_eq!(m.write(f, 0, b"x"), Err(libc::EIO));
        assert_eq!(m.read(f, 0, 1), Err(libc::EIO));
        assert_eq!(m.fsync(f, 0), Err(libc::EIO));
        assert_eq!(m.lookup(ROOT_INO, os("f")), Err(libc::EIO));
        assert_eq!(
            m.create(ROOT_INO, os("g"), 0o644, 0, 0).map(|a| a.ino),
            Err(libc::EIO)
        );
        assert_eq!(m.power_cut(None).map(|_| ()), Err(libc::EIO));
    }

    #[test]
    fn errors_on_odd_input() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        let d = m.mkdir(ROOT_INO, os("d"), 0o755, 0, 0).unwrap().ino;
        new_file(&mut m, d, "inner");
        let e = |r: OpResult<Attr>| r.map(|a| a.ino);
        assert_eq!(
            e(m.create(ROOT_INO, os("f"), 0o644, 0, 0)),
            Err(libc::EEXIST)
        );
        assert_eq!(e(m.create(f, os("x"), 0o644, 0, 0)), Err(libc::ENOTDIR));
        assert_eq!(e(m.create(999, os("x"), 0o644, 0, 0)), Err(libc::ENOENT));
        assert_eq!(
            e(m.create(ROOT_INO, os("a/b"), 0o644, 0, 0)),
            Err(libc::EINVAL)
        );
        let long = "x".repeat(300);
        assert_eq!(e(m.lookup(ROOT_INO, os(&long))), Err(libc::ENAMETOOLONG));
        assert_eq!(e(m.lookup(ROOT_INO, os("nope"))), Err(libc::ENOENT));
        assert_eq!(m.unlink(ROOT_INO, os("d")), Err(libc::EISDIR));
        assert_eq!(m.rmdir(ROOT_INO, os("f")), Err(libc::ENOTDIR));
        assert_eq!(m.rmdir(ROOT_INO, os("d")), Err(libc::ENOTEMPTY));
        assert_eq!(m.write(d, 0, b"x"), Err(libc::EISDIR));
        assert_eq!(m.read(d, 0, 1), Err(libc::EISDIR));
        assert_eq!(m.write(f, MAX_FILE_SIZE, b"x"), Err(libc::EFBIG));
        assert_eq!(m.write(f, u64::MAX, b"x"), Err(libc::EFBIG));
        assert_eq!(m.set_len(f, MAX_FILE_SIZE + 1), Err(libc::EFBIG));
        assert_eq!(m.readdir(f).map(|_| ()), Err(libc::ENOTDIR));
        assert_eq!(m.open(f, true), Err(libc::ENOTDIR));
        assert_eq!(m.open(d, false), Err(libc::EISDIR));
        assert_eq!(m.fsync(999, 0), Err(libc::ENOENT));
        // Renames.
        assert_eq!(
            m.rename(ROOT_INO, os("f"), ROOT_INO, os("d"), 0),
            Err(libc::EISDIR)
        );
        assert_eq!(
            m.rename(ROOT_INO, os("d"), d, os("sub"), 0),
            Err(libc::EINVAL)
        );
        let e2 = m.mkdir(ROOT_INO, os("e"), 0o755, 0, 0).unwrap().ino;
        assert_eq!(
            m.rename(ROOT_INO, os("e"), ROOT_INO, os("f"), 0),
            Err(libc::ENOTDIR)
        );
        assert_eq!(
            m.rename(ROOT_INO, os("e"), ROOT_INO, os("d"), 0),
            Err(libc::ENOTEMPTY)
        );
        let g = new_file(&mut m, ROOT_INO, "g");
        assert_eq!(
            m.rename(ROOT_INO, os("g"), ROOT_INO, os("f"), RENAME_NOREPLACE),
            Err(libc::EEXIST)
        );
        assert_eq!(
            m.rename(ROOT_INO, os("g"), ROOT_INO, os("f"), 2),
            Err(libc::EINVAL)
        );
        assert_eq!(
            m.rename(ROOT_INO, os("zz"), ROOT_INO, os("f"), 0),
            Err(libc::ENOENT)
        );
        m.rename(ROOT_INO, os("g"), ROOT_INO, os("g"), 0).unwrap();
        m.rename(ROOT_INO, os("g"), ROOT_INO, os("f"), 0).unwrap();
        assert_eq!(m.lookup(ROOT_INO, os("f")).unwrap().ino, g);
        // Creating in a removed directory.
        m.rmdir(ROOT_INO, os("e")).unwrap();
        assert_eq!(e(m.create(e2, os("x"), 0o644, 0, 0)), Err(libc::ENOENT));
        // fallocate.
        assert_eq!(m.fallocate(g, 0, 0, 0), Err(libc::EINVAL));
        assert_eq!(m.fallocate(g, 0, 10, 0x40), Err(libc::EOPNOTSUPP));
    }

    #[test]
    fn fallocate_modes() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        m.write(f, 0, b"abcdef").unwrap();
        m.fallocate(f, 0, 100, libc::FALLOC_FL_KEEP_SIZE).unwrap();
        assert_eq!(m.getattr(f).unwrap().size, 6);
        m.fallocate(f, 4, 6, 0).unwrap();
        assert_eq!(m.read(f, 0, 100).unwrap(), b"abcdef\0\0\0\0");
        m.fallocate(
            f,
            1,
            2,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        )
        .unwrap();
        assert_eq!(m.read(f, 0, 4).unwrap(), b"a\0\0d");
        m.fallocate(f, 8, 4, libc::FALLOC_FL_ZERO_RANGE).unwrap();
        assert_eq!(m.getattr(f).unwrap().size, 12);
        assert_eq!(
            m.fallocate(f, 0, 1, libc::FALLOC_FL_PUNCH_HOLE),
            Err(libc::EOPNOTSUPP)
        );
    }

    #[test]
    fn readdir_and_attrs() {
        let mut m = Model::new();
        let d = m.mkdir(ROOT_INO, os("d"), 0o755, 0, 0).unwrap().ino;
        new_file(&mut m, d, "b");
        new_file(&mut m, d, "a");
        let names: Vec<_> = m.readdir(d).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, [".", "..", "a", "b"]);
        assert_eq!(m.readdir(d).unwrap()[1].ino, ROOT_INO);
        assert_eq!(m.getattr(ROOT_INO).unwrap().nlink, 3);
        assert_eq!(m.lookup(d, os("..")).unwrap().ino, ROOT_INO);
        let a = m
            .setattr(
                d,
                SetAttr {
                    perm: Some(0o700),
                    ..SetAttr::default()
                },
            )
            .unwrap();
        assert_eq!(a.perm, 0o700);
        assert_eq!(
            m.setattr(
                d,
                SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                }
            ),
            Err(libc::EISDIR)
        );
    }

    #[test]
    fn unreachable_inodes_are_freed() {
        let mut m = Model::new();
        let f = new_file(&mut m, ROOT_INO, "f");
        let fh = m.open(f, false).unwrap();
        m.write(f, 0, &[7; 1000]).unwrap();
        m.fsync(ROOT_INO, 0).unwrap();
        m.unlink(ROOT_INO, os("f")).unwrap();
        m.fsync(ROOT_INO, 0).unwrap();
        // Still open and looked up: kept, and readable.
        assert_eq!(m.read(f, 0, 2).unwrap(), [7, 7]);
        m.release(fh);
        assert_eq!(m.open_handles(), 0);
        assert!(m.nodes.contains_key(&f));
        m.forget(f, 1);
        assert!(!m.nodes.contains_key(&f));
        assert_eq!(m.nodes.len(), 1);
    }

    #[test]
    fn from_tree_is_all_durable() {
        let mut m = Model::new();
        let d = m.mkdir(ROOT_INO, os("d"), 0o750, 0, 0).unwrap().ino;
        let f = new_file(&mut m, d, "f");
        m.write(f, 0, b"content").unwrap();
        let tree = m.live_tree();
        let mut loaded = Model::from_tree(&tree).unwrap();
        assert_eq!(loaded.durable_tree(), tree);
        assert_eq!(loaded.power_cut(None).unwrap().0, tree);
        assert!(Model::from_tree(&Tree::File {
            data: vec![],
            perm: 0
        })
        .is_none());
    }
}
