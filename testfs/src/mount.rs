//! [`Mount`]: a live `testfs` mount and its controls (power cut, fsync
//! failure injection, clean unmount).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use fuser::MountOption;
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};

use crate::fs::TestFs;
use crate::model::{Model, State, Stats, TornWrite};
use crate::tree::Tree;

/// A mounted `testfs`: the FUSE session runs on a background thread of this
/// process, serving `mountpoint` from an in-memory [`Model`] loaded from
/// `backing`. The backing directory is written only by
/// [`Mount::power_cut`], [`Mount::power_cut_torn`] and [`Mount::unmount`]
/// (and by dropping the handle, which acts as a power cut then an unmount).
#[derive(Debug)]
pub struct Mount {
    model: Arc<Mutex<Model>>,
    backing: PathBuf,
    mountpoint: PathBuf,
    session: Option<JoinHandle<io::Result<()>>>,
}

/// Mounts a `testfs` on `mountpoint` (an existing directory) over the
/// existing directory `backing`, whose current contents become the initial,
/// fully durable state. The two must be different directories, neither
/// inside the other. Needs root and `/dev/fuse` (see [`fuse_available`]).
pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<Mount> {
    let backing = backing.canonicalize()?;
    let mountpoint = mountpoint.canonicalize()?;
    if backing.starts_with(&mountpoint) || mountpoint.starts_with(&backing) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "testfs: backing dir and mountpoint must not contain each other",
        ));
    }
    let tree = Tree::read_from(&backing)?;
    let model = Model::from_tree(&tree).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "testfs: backing is not a directory",
        )
    })?;
    let model = Arc::new(Mutex::new(model));
    let options = [
        MountOption::FSName("testfs".to_owned()),
        MountOption::Subtype("testfs".to_owned()),
        MountOption::DefaultPermissions,
        MountOption::AllowOther,
    ];
    let mut session = fuser::Session::new(TestFs::new(model.clone()), &mountpoint, &options)?;
    let handle = std::thread::Builder::new()
        .name("testfs-session".to_owned())
        .spawn(move || session.run());
    let handle = match handle {
        Ok(h) => h,
        Err(e) => {
            // The session (and with it the mount) was dropped with the
            // closure; make sure nothing stays mounted.
            let _ = umount2(&mountpoint, MntFlags::MNT_DETACH);
            return Err(e);
        }
    };
    Ok(Mount {
        model,
        backing,
        mountpoint,
        session: Some(handle),
    })
}

impl Mount {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The (canonical) mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The (canonical) backing directory.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Counters of the operations the filesystem has served.
    pub fn stats(&self) -> Stats {
        self.model().stats()
    }

    /// Whether a power cut has happened.
    pub fn is_cut(&self) -> bool {
        self.model().state() == State::Cut
    }

    /// Power cut: atomically with respect to every filesystem operation,
    /// the backing directory is made to hold exactly the durable state, and
    /// every later operation on the mount fails with `EIO`; nothing more
    /// reaches the backing directory. The mount stays in place (call
    /// [`Mount::unmount`]). Fails if a cut or unmount already happened, or
    /// if writing the backing directory fails.
    pub fn power_cut(&self) -> io::Result<()> {
        self.cut(None).map(|_| ())
    }

    /// Like [`Mount::power_cut`], but first a random prefix (possibly empty,
    /// possibly whole) of one randomly chosen pending write is applied to
    /// the durable content of its file. The choice depends only on `seed`
    /// and the pending writes. Returns what was torn, or `None` if no file
    /// of the durable tree had a pending write.
    pub fn power_cut_torn(&self, seed: u64) -> io::Result<Option<TornWrite>> {
        self.cut(Some(seed))
    }

    fn cut(&self, seed: Option<u64>) -> io::Result<Option<TornWrite>> {
        let mut model = self.model();
        let (tree, torn) = model.power_cut(seed).map_err(already_stopped)?;
        // Written while the lock is held: no operation can slip in between.
        tree.write_to(&self.backing)?;
        Ok(torn)
    }

    /// Makes the `nth` next fsync fail with `EIO` (file and directory
    /// fsyncs counted together; 1 = the very next one; 0 disarms). The
    /// failing fsync drops the pending operations it covered: they never
    /// become durable, not even at a clean unmount, though reads still see
    /// them (like Linux after a writeback error). The error is then reported
    /// once to every other open file description of that file or directory
    /// that was open when it happened, by its next fsync (which otherwise
    /// works normally); descriptions opened later never see it. See the
    /// crate documentation and [`Model::fsync`].
    pub fn fail_fsync(&self, nth: u64) {
        self.model().fail_fsync(nth);
    }

    /// Unmounts. Without an earlier power cut this is a clean shutdown:
    /// every pending operation is first made durable and the backing
    /// directory then equals the live view (minus whatever failed fsyncs
    /// dropped). After a power cut the backing directory is left as the
    /// cut made it. Files still open on the mount do not block the unmount:
    /// the FUSE connection is then aborted (their later operations fail with
    /// `ENOTCONN`) and the mount detached.
    pub fn unmount(mut self) -> io::Result<()> {
        let written = {
            let mut model = self.model();
            match model.shutdown() {
                Ok(tree) => tree.write_to(&self.backing),
                Err(_) => Ok(()),
            }
        };
        let detached = self.detach();
        written.and(detached)
    }

    /// Unmounts the filesystem and waits for the session thread to end.
    fn detach(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match umount2(&self.mountpoint, MntFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EBUSY) => {
                // Open files. MNT_FORCE makes FUSE abort the connection
                // (which ends the session loop); MNT_DETACH then removes the
                // mount from the namespace.
                let _ = umount2(&self.mountpoint, MntFlags::MNT_FORCE);
                match umount2(&self.mountpoint, MntFlags::MNT_DETACH) {
                    Ok(()) | Err(Errno::EINVAL) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        match session.join() {
            // The mount is gone: a session loop that ends on an aborted
            // connection (as a forced unmount makes it, and as the kernel
            // sometimes ends it after a plain one) ended as asked.
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionAborted => Ok(()),
            Ok(result) => result,
            Err(_) => Err(io::Error::other("testfs: session thread panicked")),
        }
    }
}

impl Drop for Mount {
    /// Dropping a mount that was not unmounted (a test that panicked, say)
    /// acts as a power cut followed by an unmount: no un-fsynced data
    /// reaches the backing directory. Errors are ignored.
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = self.cut(None);
            let _ = self.detach();
        }
    }
}

fn already_stopped(_: i32) -> io::Error {
    io::Error::other("testfs: the filesystem was already cut or unmounted")
}

/// Whether `testfs` can be mounted here: `Ok(())`, or a one-line reason
/// (no `/dev/fuse`, not root, or a probe mount failed). The probe (mount on
/// a temporary directory, write and read back a file, unmount) runs once per
/// process; later calls return the cached answer. Meant for tests:
///
/// ```no_run
/// if let Err(why) = testfs::fuse_available() {
///     println!("skipping: {why}");
///     return;
/// }
/// ```
pub fn fuse_available() -> Result<(), String> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("testfs: /dev/fuse is missing".to_owned());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("testfs: not running as root (needed to mount through /dev/fuse)".to_owned());
    }
    let base = std::env::temp_dir().join(format!("testfs-probe-{}", std::process::id()));
    let result = probe_in(&base);
    let _ = fs::remove_dir_all(&base);
    result.map_err(|e| format!("testfs: probe mount failed: {e}"))
}

fn probe_in(base: &Path) -> io::Result<()> {
    let backing = base.join("backing");
    let mnt = base.join("mnt");
    fs::create_dir_all(&backing)?;
    fs::create_dir_all(&mnt)?;
    let m = mount(&backing, &mnt)?;
    let check = fs::write(mnt.join("probe"), b"ok").and_then(|()| fs::read(mnt.join("probe")));
    m.unmount()?;
    if check? != b"ok" || fs::read(backing.join("probe"))? != b"ok" {
        return Err(io::Error::other("read back wrong data"));
    }
    Ok(())
}
