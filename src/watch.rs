//! Watchers: [`Subscriber`]s told about changes to keys with a prefix, only
//! once the change is flushed (or synced), never one that a crash could take
//! back.
//!
//! Events come from the frozen maps of a flush cycle, which hold exactly the
//! newest write of each key up to the cycle's cut (invariant 3):
//!
//! - after step 5 of a cycle (its commit is flushed), [`Watchers::flushed`]
//!   makes one event per frozen entry under a watched prefix (a value, or a
//!   removal for a tombstone or a value already expired), sorted by seq, and
//!   hands it to every `Flushed` subscriber of that prefix, and **stages** it
//!   for every `Synced` one;
//! - after a sync succeeded ([`Watchers::synced`]), the staged events of
//!   every `Synced` subscriber are delivered: a sync makes every committed
//!   cycle durable. A failed sync poisons the engine; staged events are then
//!   never delivered.
//!
//! So a subscriber sees each key's changes in seq order (cycles commit in
//! order, a cycle holds one entry per key), and only at the granularity of
//! flush cycles: writes that a later write of the key replaced before a
//! flush (coalesced writes) never reach storage and are never events.
//!
//! A slow subscriber never slows writers or the flusher: its queue holds at
//! most [`QUEUE`] events; an event that does not fit is dropped and counted,
//! and the subscriber gets [`Event::Lagged`] with the count in its place, in
//! order, before any later event.
//!
//! Locks: the registry mutex, then a subscriber's queue mutex; both leaves
//! (nothing else is taken under them). The coordinator delivers with no
//! shard lock held.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::buffer::{Frozen, Slot};
use crate::clock::UnixMillis;
use crate::durability::Durability;
use crate::lookup::live;
use crate::storage::Storage;
use crate::value::Value;

/// Events a subscriber's queue holds (staged events of a `Synced`
/// subscriber count too). Past that, events are dropped and reported as
/// [`Event::Lagged`].
pub(crate) const QUEUE: usize = 16 * 1024;

/// A change that a watcher was told about, or a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// `key` now holds `value`, or was removed (`None`: deleted, expired, or
    /// purged after its deadline), by the write with sequence number `seq`.
    /// Delivered only once the change is flushed (or synced, as the
    /// subscriber asked).
    Changed {
        /// The key (without its tree's prefix, for a tree's watcher).
        key: Value,
        /// The new value; `None` for a removal.
        value: Option<Value>,
        /// The seq of the write (increasing per key, and over the events of
        /// one subscriber).
        seq: u64,
    },
    /// The subscriber fell behind: `missed` events were dropped here because
    /// its queue was full. Keys may have changed without an event; read
    /// them again to catch up.
    Lagged {
        /// Events dropped.
        missed: u64,
    },
}

impl Event {
    /// The changed key; empty for [`Event::Lagged`].
    pub fn key(&self) -> &[u8] {
        match self {
            Event::Changed { key, .. } => key,
            Event::Lagged { .. } => &[],
        }
    }

    /// The new value; `None` for a removal, and for [`Event::Lagged`].
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            Event::Changed { value, .. } => value.as_deref(),
            Event::Lagged { .. } => None,
        }
    }

    /// The seq of the write; `None` for [`Event::Lagged`].
    pub fn seq(&self) -> Option<u64> {
        match self {
            Event::Changed { seq, .. } => Some(*seq),
            Event::Lagged { .. } => None,
        }
    }

    /// Events dropped at this point (`Some` only for [`Event::Lagged`]).
    pub fn lagged(&self) -> Option<u64> {
        match self {
            Event::Lagged { missed } => Some(*missed),
            Event::Changed { .. } => None,
        }
    }
}

/// One subscriber's queue, shared by the registry and the [`Subscriber`].
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    /// The subscriber was dropped: the registry forgets it.
    dropped: AtomicBool,
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<Event>,
    /// Events dropped since the last one queued (reported as `Lagged`).
    missed: u64,
    /// `Synced` subscribers: events flushed, waiting for a sync.
    staged: Vec<Event>,
    /// The engine shut down: nothing more will come.
    closed: bool,
}

impl QueueState {
    fn queued(&self) -> usize {
        self.events.len() + self.staged.len()
    }

    /// Queues `e`, or counts it dropped if the queue is full.
    fn push(&mut self, e: Event) {
        if self.queued() >= QUEUE {
            self.missed += 1;
            return;
        }
        if self.missed > 0 {
            let missed = std::mem::take(&mut self.missed);
            self.events.push_back(Event::Lagged { missed });
        }
        self.events.push_back(e);
    }

    fn stage(&mut self, e: Event) {
        if self.queued() >= QUEUE {
            self.missed += 1;
        } else {
            self.staged.push(e);
        }
    }

    fn pop(&mut self) -> Option<Event> {
        self.events.pop_front().or_else(|| {
            (self.missed > 0).then(|| Event::Lagged {
                missed: std::mem::take(&mut self.missed),
            })
        })
    }
}

struct Watch {
    /// Keys starting with this (internal keys: a tree's prefix included).
    prefix: Box<[u8]>,
    /// Bytes stripped from event keys (the tree's prefix).
    strip: usize,
    synced: bool,
    queue: Arc<Queue>,
}

/// Every subscriber of one engine. Owned by `Shared`.
#[derive(Default)]
pub(crate) struct Watchers {
    list: Mutex<Vec<Watch>>,
    /// `list.len()`, read without the lock: cycles skip all of this when no
    /// one watches.
    count: AtomicUsize,
    /// Set at shutdown: new subscriptions are refused.
    closed: AtomicBool,
}

impl Watchers {
    pub(crate) fn subscribe(
        &self,
        prefix: &[u8],
        strip: usize,
        durability: Durability,
    ) -> Option<Subscriber> {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            dropped: AtomicBool::new(false),
        });
        let mut list = self.list.lock();
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        list.push(Watch {
            prefix: Box::from(prefix),
            strip,
            synced: durability == Durability::Synced,
            queue: Arc::clone(&queue),
        });
        self.count.store(list.len(), Ordering::SeqCst);
        Some(Subscriber { queue })
    }

    /// Step 5 of a cycle is done: the frozen entries are flushed. Delivers
    /// their events to `Flushed` subscribers, stages them for `Synced` ones.
    /// `storage` loads the value of a metadata-only change of a value in the
    /// blob tree.
    pub(crate) fn flushed(&self, frozen: &Frozen, storage: &dyn Storage, now: UnixMillis) {
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut list = self.list.lock();
        list.retain(|w| !w.queue.dropped.load(Ordering::SeqCst));
        self.count.store(list.len(), Ordering::SeqCst);
        if list.is_empty() {
            return;
        }
        let mut changes = Vec::new();
        for shard in frozen.shards.iter().flatten() {
            for (key, entry) in &shard.entries {
                if !list.iter().any(|w| key.starts_with(&w.prefix)) {
                    continue;
                }
                let value = if live(entry.deadline, || now) {
                    match &entry.slot {
                        Slot::Value(v) => Some(v.clone()),
                        // What storage holds, as any read returns it:
                        // decompressed and checked.
                        Slot::Blob(b) => match storage
                            .get_blob(b.id)
                            .and_then(|v| v.map(|stored| b.value(key, stored)).transpose())
                        {
                            Ok(v) => v,
                            Err(e) => {
                                log::warn!("millpond: a watched blob value could not be read: {e}");
                                None
                            }
                        },
                        Slot::Tombstone => None,
                    }
                } else {
                    None
                };
                changes.push((entry.seq, Bytes::copy_from_slice(key), value));
            }
        }
        changes.sort_unstable_by_key(|(seq, _, _)| *seq);
        for w in list.iter() {
            let mut q = w.queue.state.lock();
            let mut any = false;
            for (seq, key, value) in changes.iter().filter(|(_, k, _)| k.starts_with(&w.prefix)) {
                let e = Event::Changed {
                    key: Value(key.slice(w.strip.min(key.len())..)),
                    value: value.clone().map(Value),
                    seq: seq.0,
                };
                if w.synced {
                    q.stage(e);
                } else {
                    q.push(e);
                    any = true;
                }
            }
            drop(q);
            if any {
                w.queue.ready.notify_all();
            }
        }
    }

    /// A sync succeeded: every committed cycle is durable. Delivers what
    /// `Synced` subscribers had staged.
    pub(crate) fn synced(&self) {
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let list = self.list.lock();
        for w in list.iter().filter(|w| w.synced) {
            let mut q = w.queue.state.lock();
            if q.staged.is_empty() {
                continue;
            }
            let staged = std::mem::take(&mut q.staged);
            for e in staged {
                q.push(e);
            }
            drop(q);
            w.queue.ready.notify_all();
        }
    }

    /// The engine shut down (or halted): every subscriber ends once it has
    /// read what it was given. Staged events of `Synced` subscribers are
    /// delivered only if `synced` (the final cycle synced).
    pub(crate) fn close(&self, synced: bool) {
        if synced {
            self.synced();
        }
        let mut list = self.list.lock();
        self.closed.store(true, Ordering::SeqCst);
        for w in list.drain(..) {
            let mut q = w.queue.state.lock();
            q.staged.clear();
            q.closed = true;
            drop(q);
            w.queue.ready.notify_all();
        }
        self.count.store(0, Ordering::SeqCst);
    }
}

/// Changes to the keys under one prefix, delivered only once they are
/// flushed (or synced); from [`Engine::watch_prefix`](crate::Engine::watch_prefix).
///
/// Iterating blocks until the next event, and ends (`None`) once the engine
/// has shut down and every event given to this subscriber was read. Events
/// of one key come in seq order (and all events of one subscriber too).
/// Dropping it unsubscribes.
pub struct Subscriber {
    queue: Arc<Queue>,
}

impl Subscriber {
    /// The next event, waiting at most `timeout`; `None` if none came in
    /// time, or if the engine has shut down and every event was read.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now().checked_add(timeout);
        let mut q = self.queue.state.lock();
        loop {
            if let Some(e) = q.pop() {
                return Some(e);
            }
            if q.closed {
                return None;
            }
            match deadline {
                Some(d) => {
                    if self.queue.ready.wait_until(&mut q, d).timed_out() {
                        return q.pop();
                    }
                }
                None => self.queue.ready.wait(&mut q),
            }
        }
    }

    /// The next event if one is queued now, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.queue.state.lock().pop()
    }
}

impl Iterator for Subscriber {
    type Item = Event;

    /// The next event, waiting for it; `None` once the engine has shut down
    /// and every event was read.
    fn next(&mut self) -> Option<Event> {
        let mut q = self.queue.state.lock();
        loop {
            if let Some(e) = q.pop() {
                return Some(e);
            }
            if q.closed {
                return None;
            }
            self.queue.ready.wait(&mut q);
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.queue.dropped.store(true, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").finish_non_exhaustive()
    }
}

const _: () = {
    const fn assert_send<T: Send + 'static>() {}
    assert_send::<Subscriber>();
};
