//! The one public error type, [`Error`], and [`Result`].
//!
//! Variants separate what the caller did (bad input, a closed engine), what the
//! disk did (I/O, corruption) and what the engine decided (refusing writes while
//! it cannot persist them). Storage-layer errors are converted at the storage
//! seam (`storage::sled`), so no sled type ever appears here.

use std::fmt;
use std::path::PathBuf;

/// `Result<T, millpond::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in millpond.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine was shut down (by [`Engine::shutdown`](crate::Engine::shutdown)
    /// or by dropping its last handle); every operation now fails with this.
    #[error("the engine is shut down")]
    Closed,

    /// An I/O error from the file system.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// An error reported by the storage backend that is neither plain I/O nor
    /// detected corruption.
    #[error("storage error: {0}")]
    Storage(String),

    /// Stored data failed a checksum or did not decode. The data is left in
    /// place (never overwritten or treated as missing); `key` names the user
    /// key when one is known.
    #[error("corrupt data{}: {detail}", KeySuffix(key.as_deref()))]
    Corrupt {
        /// The user key whose record or value is corrupt, if known.
        key: Option<Vec<u8>>,
        /// What the check found.
        detail: String,
    },

    /// A [`Config`](crate::Config) value is out of range; returned by
    /// [`Engine::open`](crate::Engine::open).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A key or value is longer than the configured limit.
    #[error("{what} is {len} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The configured limit.
        max: usize,
    },

    /// Another engine (in this or another process) holds the store's lock.
    #[error("the store at {} is in use by another engine", path.display())]
    Locked {
        /// The store directory (a temporary store's name, `memory:N`).
        path: PathBuf,
    },

    /// The directory exists but does not hold a millpond store.
    #[error("{} is not a millpond store: {reason}", path.display())]
    NotAStore {
        /// The directory that was opened.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },

    /// The store was written by a format version this build cannot read.
    #[error(
        "store format version {found} is not supported (this build reads versions 1 to {supported})"
    )]
    UnsupportedFormat {
        /// The version recorded in the store.
        found: u32,
        /// The newest version this build reads (it reads every version from
        /// 1 up to it).
        supported: u32,
    },

    /// A stored value did not decode as the type asked for by
    /// [`Engine::get_as`](crate::Engine::get_as).
    #[error(
        "the value of key {} does not decode as the requested type: {detail}",
        DisplayKey(key)
    )]
    Decode {
        /// The key that was read.
        key: Vec<u8>,
        /// The decoder's message.
        detail: String,
    },

    /// A typed value could not be encoded by [`Engine::set_as`](crate::Engine::set_as).
    #[error("the value does not encode: {0}")]
    Encode(String),

    /// Flushing to disk has failed repeatedly; new writes are refused until a
    /// flush succeeds again, so that nothing is acknowledged that cannot be
    /// persisted. Buffered writes are kept and retried.
    #[error(
        "writes are refused: flushing has failed {attempts} times in a row (last error: {reason})"
    )]
    FlushFailing {
        /// Consecutive failed flush attempts.
        attempts: u32,
        /// The last failure.
        reason: String,
    },

    /// A failure the engine cannot safely recover from while running (an
    /// fsync failed: the kernel may already have dropped the unsynced pages).
    /// Writes and checkpoints are refused until the store is reopened; the last
    /// successful checkpoint is what the disk holds.
    #[error("the engine is poisoned and must be reopened: {reason}")]
    Poisoned {
        /// The failure that poisoned the engine.
        reason: String,
    },

    /// A transaction could not commit: other writers kept changing what it
    /// read, through `attempts` attempts. Also returned by
    /// [`Transaction::get`](crate::Transaction::get) inside an attempt that
    /// must be retried (pass it on with `?`).
    #[error("the transaction conflicted with other writers {attempts} times and gave up")]
    Conflict {
        /// Attempts made (0 inside an attempt).
        attempts: u32,
    },

    /// The engine was called from inside a closure that holds one of its
    /// locks (the closure of [`Engine::modify`](crate::Engine::modify)), or a
    /// transaction was started inside a transaction. Such a call would
    /// deadlock, so it is refused.
    #[error("the engine was called from inside a modify closure or a transaction was nested")]
    Reentrant,

    /// A transaction was given a [`Tree`](crate::Tree) of another engine
    /// ([`Transaction::tree`](crate::Transaction::tree)).
    #[error("the tree belongs to another engine than the transaction")]
    ForeignTree,

    /// With many engines on one PostgreSQL database
    /// (`Config::postgres`, feature `postgres`): this engine does not
    /// hold the lease of the key's partition, and nothing was written.
    /// - Another engine holds it: that engine was asked to hand it over and
    ///   does so after its next flush cycle; retry shortly.
    /// - This engine is handing it over at another engine's request:
    ///   retry shortly (the write then asks for it back).
    /// - This engine's lease was taken over (it expired while the engine
    ///   was paused or cut off) while it had unflushed writes of the
    ///   partition: the partition stays refused for the life of the
    ///   engine, and a flush that held writes of it was rolled back whole
    ///   (those writes are lost, as in a crash of this engine).
    #[error("this engine does not own partition {partition}: {reason}")]
    NotOwner {
        /// The partition (a hash of the key; see DESIGN.md, "Leases").
        partition: u32,
        /// Why: who holds it, or how the lease was lost.
        reason: String,
    },
}

impl Error {
    /// A copy of this error, for handing one flush failure to every caller
    /// waiting on it (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Closed => Error::Closed,
            Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
            Error::Storage(s) => Error::Storage(s.clone()),
            Error::Corrupt { key, detail } => Error::Corrupt {
                key: key.clone(),
                detail: detail.clone(),
            },
            Error::Config(s) => Error::Config(s.clone()),
            Error::TooLarge { what, len, max } => Error::TooLarge {
                what,
                len: *len,
                max: *max,
            },
            Error::Locked { path } => Error::Locked { path: path.clone() },
            Error::NotAStore { path, reason } => Error::NotAStore {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::UnsupportedFormat { found, supported } => Error::UnsupportedFormat {
                found: *found,
                supported: *supported,
            },
            Error::Decode { key, detail } => Error::Decode {
                key: key.clone(),
                detail: detail.clone(),
            },
            Error::Encode(s) => Error::Encode(s.clone()),
            Error::FlushFailing { attempts, reason } => Error::FlushFailing {
                attempts: *attempts,
                reason: reason.clone(),
            },
            Error::Poisoned { reason } => Error::Poisoned {
                reason: reason.clone(),
            },
            Error::Conflict { attempts } => Error::Conflict {
                attempts: *attempts,
            },
            Error::Reentrant => Error::Reentrant,
            Error::ForeignTree => Error::ForeignTree,
            Error::NotOwner { partition, reason } => Error::NotOwner {
                partition: *partition,
                reason: reason.clone(),
            },
        }
    }

    pub(crate) fn corrupt(key: Option<&[u8]>, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            key: key.map(<[u8]>::to_vec),
            detail: detail.into(),
        }
    }
}

/// Shows a key as text when it is printable ASCII, as escaped bytes otherwise.
pub(crate) struct DisplayKey<'a>(pub &'a [u8]);

impl fmt::Display for DisplayKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            for c in std::ascii::escape_default(b) {
                fmt::Write::write_char(f, char::from(c))?;
            }
        }
        f.write_str("\"")
    }
}

struct KeySuffix<'a>(Option<&'a [u8]>);

impl fmt::Display for KeySuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(key) => write!(f, " at key {}", DisplayKey(key)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shown_escaped() {
        let e = Error::corrupt(Some(b"a\x00b"), "bad crc");
        assert_eq!(e.to_string(), "corrupt data at key \"a\\x00b\": bad crc");
        let e = Error::corrupt(None, "bad crc");
        assert_eq!(e.to_string(), "corrupt data: bad crc");
    }

    #[test]
    fn duplicate_keeps_kind_and_message() {
        let e = Error::Io(std::io::Error::other("disk gone"));
        let d = e.duplicate();
        assert_eq!(e.to_string(), d.to_string());
        assert!(matches!(d, Error::Io(ref io) if io.kind() == std::io::ErrorKind::Other));
    }
}
