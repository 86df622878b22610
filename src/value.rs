//! [`Value`]: a value handed out by the engine, shared without copying.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// A value read from the engine. Dereferences to `[u8]`.
///
/// Cloning is cheap (a reference count), and a value read from the dirty map
/// shares the buffer of the write that produced it. Use `to_vec()`
/// (through `Deref`) or `Vec::from` for an owned copy.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Value(pub(crate) Bytes);

impl Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<[u8]> for Value {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value({})", crate::error::DisplayKey(&self.0))
    }
}

impl From<Value> for Vec<u8> {
    fn from(v: Value) -> Vec<u8> {
        Vec::from(v.0)
    }
}

impl PartialEq<[u8]> for Value {
    fn eq(&self, other: &[u8]) -> bool {
        self.0 == other
    }
}

impl PartialEq<&[u8]> for Value {
    fn eq(&self, other: &&[u8]) -> bool {
        self.0 == *other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Value {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.0 == other[..]
    }
}

impl PartialEq<Vec<u8>> for Value {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.0 == other[..]
    }
}

impl PartialEq<str> for Value {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Value {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_and_converts() {
        let v = Value(Bytes::from_static(b"abc"));
        assert_eq!(v, b"abc");
        assert_eq!(v, "abc");
        assert_eq!(v, b"abc".to_vec());
        assert_eq!(&*v, b"abc");
        assert_eq!(Vec::from(v.clone()), b"abc".to_vec());
        assert_eq!(format!("{v:?}"), "Value(\"abc\")");
    }
}
