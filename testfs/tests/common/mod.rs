//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// A temporary backing directory and mountpoint.
pub struct Dirs {
    _tmp: tempfile::TempDir,
    pub backing: PathBuf,
    pub mnt: PathBuf,
}

/// `None` (after printing one line saying why) when FUSE cannot be used
/// here; the calling test should then return early.
pub fn dirs() -> Option<Dirs> {
    if let Err(why) = testfs::fuse_available() {
        println!("skipping FUSE test: {why}");
        return None;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let backing = tmp.path().join("backing");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&backing).expect("mkdir backing");
    fs::create_dir(&mnt).expect("mkdir mnt");
    Some(Dirs {
        _tmp: tmp,
        backing,
        mnt,
    })
}

/// fsync of a directory.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// fsync of a file.
pub fn fsync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// fsyncs every file and directory under `path`, and `path` itself.
pub fn fsync_tree(path: &Path) -> io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fsync_tree(&entry.path())?;
        } else {
            fsync_file(&entry.path())?;
        }
    }
    fsync_dir(path)
}
