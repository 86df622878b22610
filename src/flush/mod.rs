//! The flusher threads: when to flush ([`coordinator`]), how one flush cycle
//! runs ([`cycle`]), and the parallel part of a cycle ([`worker`]).
//!
//! Threads (all owned by the engine and joined by shutdown):
//! - `millpond-flush-coordinator`: decides when a cycle starts (the oldest
//!   dirty write reached `write_delay`, the buffer passed half of
//!   `max_dirty_bytes`, a checkpoint or shutdown asked), runs it, retries
//!   failures with backoff, and answers checkpoint and shutdown requests.
//! - `millpond-flush-worker-N` (`flush_threads` of them): during a cycle, each
//!   takes a share of the frozen shards, writes their large values to the
//!   blob tree and encodes their metadata records.
//!
//! [`FlushControl`] is how the rest of the engine talks to the coordinator:
//! a non-blocking wake-up, and the lists of callers waiting for a flush or a
//! durable flush.

pub(crate) mod coordinator;
pub(crate) mod cycle;
pub(crate) mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;

use crate::buffer::Seq;
use crate::error::{Error, Result};
use crate::shared::Shared;

/// What a durable flush reports to the callers it served: the sequence
/// number up to which every write is durable, and the entries committed.
pub(crate) type SyncOutcome = Result<(Seq, u64)>;

/// Requests to the coordinator, and the way to wake it.
pub(crate) struct FlushControl {
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    requests: Mutex<Requests>,
    /// The buffer passed its high watermark; cleared when a cycle freezes.
    urgent: AtomicBool,
}

#[derive(Default)]
pub(crate) struct Requests {
    /// Callers waiting for everything acknowledged before their request to
    /// be durable. Taken by the coordinator before it freezes a cycle.
    pub syncs: Vec<Sender<SyncOutcome>>,
    /// Callers waiting for everything acknowledged before their request to
    /// be flushed (committed, not necessarily synced): `set_with(..,
    /// Durability::Flushed)`. Served by the next cycle, synced or not.
    pub flushes: Vec<Sender<SyncOutcome>>,
    /// Shutdown asked: run a final durable cycle, answer, exit.
    pub shutdown: bool,
    /// Halt asked (a simulated crash, for tests): exit without flushing.
    pub halt: bool,
}

impl FlushControl {
    pub(crate) fn new() -> FlushControl {
        let (wake_tx, wake_rx) = bounded(1);
        FlushControl {
            wake_tx,
            wake_rx,
            requests: Mutex::new(Requests::default()),
            urgent: AtomicBool::new(false),
        }
    }

    /// Wakes the coordinator so it re-examines what is due. Never blocks.
    pub(crate) fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// Asks for a cycle now because the buffer is filling up.
    pub(crate) fn request_urgent(&self) {
        if !self.urgent.swap(true, Ordering::AcqRel) {
            self.wake();
        }
    }

    pub(crate) fn take_urgent(&self) -> bool {
        self.urgent.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn is_urgent(&self) -> bool {
        self.urgent.load(Ordering::Acquire)
    }

    /// Registers a caller waiting for a durable flush of everything
    /// acknowledged so far.
    pub(crate) fn request_sync(&self) -> Result<Receiver<SyncOutcome>> {
        let (tx, rx) = bounded(1);
        {
            let mut r = self.requests.lock();
            if r.shutdown {
                return Err(Error::Closed);
            }
            r.syncs.push(tx);
        }
        self.wake();
        Ok(rx)
    }

    /// Registers a caller waiting for a flush (not a sync) of everything
    /// acknowledged so far. The coordinator runs a cycle at once.
    pub(crate) fn request_flush(&self) -> Result<Receiver<SyncOutcome>> {
        let (tx, rx) = bounded(1);
        {
            let mut r = self.requests.lock();
            if r.shutdown {
                return Err(Error::Closed);
            }
            r.flushes.push(tx);
        }
        self.wake();
        Ok(rx)
    }

    /// Asks the coordinator to run its final durable cycle and exit.
    pub(crate) fn request_shutdown(&self) -> Receiver<SyncOutcome> {
        let (tx, rx) = bounded(1);
        {
            let mut r = self.requests.lock();
            r.shutdown = true;
            r.syncs.push(tx);
        }
        self.wake();
        rx
    }

    /// Asks the coordinator to exit at once, flushing nothing.
    #[cfg(feature = "testing")]
    pub(crate) fn request_halt(&self) {
        self.requests.lock().halt = true;
        self.wake();
    }

    pub(crate) fn requests(&self) -> parking_lot::MutexGuard<'_, Requests> {
        self.requests.lock()
    }

    pub(crate) fn wake_receiver(&self) -> &Receiver<()> {
        &self.wake_rx
    }
}

/// The flusher threads of one engine.
pub(crate) struct Flusher {
    coordinator: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the workers and the coordinator.
    pub(crate) fn start(shared: &Arc<Shared>, cycles: cycle::Cycles) -> Result<Flusher> {
        let (pool, workers) = worker::Pool::start(shared)?;
        let s = Arc::clone(shared);
        let coordinator = std::thread::Builder::new()
            .name("millpond-flush-coordinator".into())
            .spawn(move || coordinator::run(&s, &pool, cycles))?;
        Ok(Flusher {
            coordinator,
            workers,
        })
    }

    /// Waits for every thread to exit (the coordinator exits after shutdown
    /// was requested; workers exit when the coordinator drops the pool).
    pub(crate) fn join(self) -> Result<()> {
        let mut panicked = self.coordinator.join().is_err();
        for w in self.workers {
            panicked |= w.join().is_err();
        }
        if panicked {
            Err(Error::Storage("a flusher thread panicked".into()))
        } else {
            Ok(())
        }
    }
}
