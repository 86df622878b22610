//! `testfs`: a FUSE filesystem that simulates power cuts, for testing the
//! crash safety of `millpond` (dev-only; Linux; root).
//!
//! Killing a process only proves that a store survives its own death: the
//! OS still writes out everything it was given. A power cut loses
//! everything that was not fsynced. `testfs` simulates that, after the
//! method of LazyFS (from the Jepsen work): it is a passthrough over a
//! *backing directory* that keeps every change in memory and lets it reach
//! the backing directory only as far as it was made durable.
//!
//! # The model
//!
//! * **Reads** (`read`, `stat`, `readdir`, `lookup`) always see the *live*
//!   view: everything written so far.
//! * **File data** (writes, truncations, `fallocate`) becomes durable on
//!   `fsync`/`fdatasync` of that file (any descriptor of it). Nothing else
//!   makes it durable: not `close`, not `sync_file_range` (not forwarded by
//!   FUSE), not `syncfs` (not forwarded at this FUSE protocol level).
//!   `O_SYNC`/`O_DSYNC` writes are fine: the kernel turns them into fsyncs.
//! * **Directory entries** (create, mkdir, unlink, rmdir, rename) become
//!   durable on `fsync` of the directory holding them. A new file whose
//!   data was fsynced but whose directory was not does not exist after a
//!   cut; a file whose directory was fsynced but whose data was not exists
//!   with its durable (possibly empty) content. New directories need every
//!   ancestor up to the root fsynced.
//! * **Renames across directories** are two independent halves: the removal
//!   of the old name becomes durable with the source directory's fsync, the
//!   new name with the target directory's fsync. So with only the source
//!   fsynced the file is lost; with only the target fsynced it is in both
//!   places (the backing directory then gets two copies). A rename within one
//!   directory is atomic with that directory's fsync.
//! * **Power cut** ([`Mount::power_cut`]): at once, with respect to every
//!   filesystem operation, the backing directory is made to hold exactly the
//!   durable state, and every later operation fails with `EIO`; nothing more
//!   is ever written to the backing directory.
//! * **Torn power cut** ([`Mount::power_cut_torn`]): the same, but first a
//!   random prefix (length `0..=len`) of one random pending write, among the
//!   files present in the durable tree, is applied to its file's durable
//!   content. Deterministic for a given seed and set of pending writes.
//! * **fsync failure** ([`Mount::fail_fsync`]): the n-th next fsync (files
//!   and directories counted together) fails with `EIO`. Like Linux after a
//!   writeback error, the operations it covered are dropped from the pending
//!   list and never become durable (not by later fsyncs, not at a clean
//!   unmount), while reads still see them. The error is then reported per
//!   *open file description* (one per `open(2)`; `dup`ed descriptors and
//!   forked children share theirs), as Linux does since 4.13 (`errseq`):
//!   every description that was open on that file or directory when the
//!   fsync failed gets `EIO` from its next fsync, once. The failing fsync
//!   itself counts as that report for its own description. A reporting
//!   fsync still makes the operations pending at that time durable (only
//!   those of the failed fsync are lost); later fsyncs through that
//!   description succeed again (until another failure). A description
//!   opened after the failure never gets it. (Simplification: Linux also
//!   hands an error that nobody has seen yet to the next opener; here the
//!   failing fsync has always seen it, and writeback failures outside an
//!   fsync are not simulated, so that case is not modelled.)
//! * **Clean unmount** ([`Mount::unmount`] without a cut): every pending
//!   operation becomes durable (an OS flushing its page cache at shutdown),
//!   so the backing directory equals the live view (minus data dropped by
//!   failed fsyncs).
//!
//! The durable state lives in memory (see [`Model`]); the backing directory
//! is read once at mount (all of it counts as durable) and written only at
//! a power cut or an unmount. If the process dies without either, the
//! backing directory keeps its state from mount time.
//!
//! # Use
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let (backing, mnt) = (std::path::Path::new("/tmp/b"), std::path::Path::new("/tmp/m"));
//! let m = testfs::mount(backing, mnt)?;
//! // ... run the store on `mnt`, maybe in a child process ...
//! m.power_cut()?; // backing now holds only what was made durable
//! // ... kill the writer ...
//! m.unmount()?;
//! // ... reopen the store from `backing` and check it ...
//! # Ok(()) }
//! ```
//!
//! Mounting needs root and `/dev/fuse` (no libfuse: `fuser` mounts through
//! the device directly); [`fuse_available`] tells tests whether to skip.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod fs;
mod model;
mod mount;
mod rng;
mod tree;

pub use fs::TestFs;
pub use model::{
    Attr, DirEntry, Errno, Fh, Ino, Model, NodeKind, OpResult, SetAttr, State, Stats, TornWrite,
    MAX_FILE_SIZE, RENAME_NOREPLACE, ROOT_INO,
};
pub use mount::{fuse_available, mount, Mount};
pub use tree::Tree;
