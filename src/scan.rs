//! [`Scan`]: live keys with a prefix, in key order, page by page.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::engine::Engine;
use crate::error::Result;
use crate::value::Value;

/// Keys read per page.
const PAGE: usize = 256;

/// An iterator over the live keys with a prefix and their values, in key
/// order; from [`Engine::scan_prefix`].
///
/// It reads a page of keys at a time, merging unpersisted writes with the
/// stored records, so it is not a snapshot: a key that exists for the whole
/// scan is returned once, with a value it had at some point during the scan;
/// keys written or deleted meanwhile may or may not appear.
pub struct Scan {
    engine: Engine,
    prefix: Vec<u8>,
    after: Option<Vec<u8>>,
    page: VecDeque<(Bytes, Bytes)>,
    done: bool,
}

impl Scan {
    pub(crate) fn new(engine: Engine, prefix: &[u8]) -> Scan {
        Scan {
            engine,
            prefix: prefix.to_vec(),
            after: None,
            page: VecDeque::new(),
            done: false,
        }
    }
}

impl Iterator for Scan {
    type Item = Result<(Vec<u8>, Value)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() && !self.done {
            match self
                .engine
                .scan_page(&self.prefix, self.after.as_deref(), PAGE)
            {
                Ok(page) => {
                    self.done = page.len() < PAGE;
                    if let Some((k, _)) = page.last() {
                        self.after = Some(k.to_vec());
                    }
                    self.page = page.into();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.page
            .pop_front()
            .map(|(k, v)| Ok((k.to_vec(), Value(v))))
    }
}
