//! [`Tree`]: a plain in-memory image of a directory tree, used to load the
//! backing directory at mount time and to write the durable (or, at a clean
//! unmount, the complete) state back to it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

/// A directory tree held in memory: regular files with their bytes, and
/// directories with their entries. Permission bits are carried along; owners,
/// times, symlinks and hard links are not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tree {
    /// A regular file.
    File {
        /// The file's whole content.
        data: Vec<u8>,
        /// Permission bits (`0o7777` mask).
        perm: u16,
    },
    /// A directory.
    Dir {
        /// Entries by name.
        entries: BTreeMap<OsString, Tree>,
        /// Permission bits (`0o7777` mask).
        perm: u16,
    },
}

impl Tree {
    /// An empty directory with mode 0755.
    pub fn empty_dir() -> Tree {
        Tree::Dir {
            entries: BTreeMap::new(),
            perm: 0o755,
        }
    }

    /// The node at `path`, relative to this tree (`""` or `"."` is the tree
    /// itself). `None` if some component is missing or is not a directory.
    pub fn get(&self, path: impl AsRef<Path>) -> Option<&Tree> {
        let mut cur = self;
        for comp in path.as_ref().components() {
            match comp {
                Component::CurDir | Component::RootDir => {}
                Component::Normal(name) => match cur {
                    Tree::Dir { entries, .. } => cur = entries.get(name)?,
                    Tree::File { .. } => return None,
                },
                Component::ParentDir | Component::Prefix(_) => return None,
            }
        }
        Some(cur)
    }

    /// The content of the regular file at `path`, if there is one.
    pub fn file(&self, path: impl AsRef<Path>) -> Option<&[u8]> {
        match self.get(path)? {
            Tree::File { data, .. } => Some(data),
            Tree::Dir { .. } => None,
        }
    }

    /// Whether anything (file or directory) exists at `path`.
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.get(path).is_some()
    }

    /// Reads the directory at `path` (recursively) into memory. Symlinks,
    /// sockets, devices and FIFOs are refused with `InvalidData`.
    pub fn read_from(path: &Path) -> io::Result<Tree> {
        let meta = fs::symlink_metadata(path)?;
        let perm = (meta.permissions().mode() & 0o7777) as u16;
        let ft = meta.file_type();
        if ft.is_file() {
            Ok(Tree::File {
                data: fs::read(path)?,
                perm,
            })
        } else if ft.is_dir() {
            let mut entries = BTreeMap::new();
            for entry in fs::read_dir(path)? {
                let entry = entry?;
                entries.insert(entry.file_name(), Tree::read_from(&entry.path())?);
            }
            Ok(Tree::Dir { entries, perm })
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "testfs: unsupported file type (only files and directories) at {}",
                    path.display()
                ),
            ))
        }
    }

    /// Makes the existing directory `path` hold exactly this tree (which
    /// must be a [`Tree::Dir`]): entries that are not in the tree are
    /// removed, files whose content differs are rewritten, missing ones are
    /// created, and permission bits are set. Files that already hold the
    /// right bytes are left alone.
    pub fn write_to(&self, path: &Path) -> io::Result<()> {
        let Tree::Dir { entries, perm } = self else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "testfs: only a directory tree can be written to a directory",
            ));
        };
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            let keep = match entries.get(&entry.file_name()) {
                Some(Tree::File { .. }) => ft.is_file(),
                Some(Tree::Dir { .. }) => ft.is_dir(),
                None => false,
            };
            if !keep {
                if ft.is_dir() {
                    fs::remove_dir_all(entry.path())?;
                } else {
                    fs::remove_file(entry.path())?;
                }
            }
        }
        for (name, child) in entries {
            let child_path = path.join(name);
            match child {
                Tree::File { data, perm } => {
                    let same = match fs::read(&child_path) {
                        Ok(old) => old == *data,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                        Err(e) => return Err(e),
                    };
                    if !same {
                        fs::write(&child_path, data)?;
                    }
                    set_perm(&child_path, *perm)?;
                }
                Tree::Dir { .. } => {
                    if !child_path.is_dir() {
                        fs::create_dir(&child_path)?;
                    }
                    child.write_to(&child_path)?;
                }
            }
        }
        set_perm(path, *perm)
    }
}

fn set_perm(path: &Path, perm: u16) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.permissions().mode() & 0o7777 != u32::from(perm) {
        fs::set_permissions(path, fs::Permissions::from_mode(u32::from(perm)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Tree;
    use std::collections::BTreeMap;
    use std::fs;

    fn file(data: &[u8]) -> Tree {
        Tree::File {
            data: data.to_vec(),
            perm: 0o644,
        }
    }

    fn dir(entries: Vec<(&str, Tree)>) -> Tree {
        Tree::Dir {
            entries: entries
                .into_iter()
                .map(|(n, t)| (n.into(), t))
                .collect::<BTreeMap<_, _>>(),
            perm: 0o755,
        }
    }

    #[test]
    fn write_then_read_round_trips_and_prunes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("b");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("stale"), b"x").unwrap();
        fs::create_dir_all(root.join("olddir/sub")).unwrap();
        fs::write(root.join("sub"), b"file where a dir goes").unwrap();
        fs::write(root.join("keep"), b"old").unwrap();

        let want = dir(vec![
            ("keep", file(b"new content")),
            ("sub", dir(vec![("inner", file(b""))])),
            ("empty", dir(vec![])),
        ]);
        want.write_to(&root).unwrap();
        assert_eq!(Tree::read_from(&root).unwrap(), want);
        assert_eq!(want.file("sub/inner"), Some(&b""[..]));
        assert!(want.exists("empty"));
        assert!(!want.exists("stale"));
        assert_eq!(want.file("sub"), None);
    }

    #[test]
    fn write_to_requires_a_dir() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(file(b"x").write_to(tmp.path()).is_err());
    }
}
