//! The expiry purger thread, `millpond-expiry`: every tick it deletes keys
//! whose deadline has passed, a bounded slice per shard at a time
//! ([`Shared::purge`]), so it never holds a shard lock for long. Reads never
//! wait for it: an expired value is absent as soon as its deadline passes.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use crate::error::Result;
use crate::shared::Shared;

/// Time between purges.
const TICK: Duration = Duration::from_millis(100);
/// Most keys purged per shard per pass.
pub(crate) const SLICE: usize = 256;

/// The running purger thread.
pub(crate) struct Purger {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Purger {
    pub(crate) fn start(shared: &Arc<Shared>) -> Result<Purger> {
        let (stop, stopped) = bounded::<()>(1);
        let s = Arc::clone(shared);
        let thread = std::thread::Builder::new()
            .name("millpond-expiry".into())
            .spawn(move || loop {
                match stopped.recv_timeout(TICK) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                // A full slice somewhere: more may be waiting, go again.
                while s.purge(Some(SLICE)) >= SLICE as u64 {}
            })?;
        Ok(Purger { stop, thread })
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(self) -> bool {
        let _ = self.stop.send(());
        self.thread.join().is_ok()
    }
}
