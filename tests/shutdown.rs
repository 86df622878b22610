//! Shutdown and drop: nothing acknowledged is lost (guarantee 6).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use common::{eventually, u64_value, Store};
use millpond::Error;

#[test]
fn dropping_the_last_handle_persists_everything() {
    let store = Store::new();
    {
        let e = store.open(store.quiet());
        let clone = e.clone();
        for i in 0..500u32 {
            let len = if i % 10 == 0 { 5000 } else { 20 };
            e.set(&i.to_be_bytes(), &vec![i as u8; len]).unwrap();
        }
        assert!(e.delete(&7u32.to_be_bytes()).unwrap());
        drop(e);
        // One handle is left: the engine still runs.
        clone.set(b"last", b"write").unwrap();
        assert_eq!(clone.stats().flushes, 0, "nothing was flushed before drop");
    }
    let e = store.open(store.quiet());
    for i in 0..500u32 {
        let got = e.get(&i.to_be_bytes()).unwrap();
        if i == 7 {
            assert_eq!(got, None);
        } else {
            let len = if i % 10 == 0 { 5000 } else { 20 };
            assert_eq!(got.unwrap(), vec![i as u8; len], "key {i}");
        }
    }
    assert_eq!(e.get(b"last").unwrap().unwrap(), b"write");
}

#[test]
fn shutdown_is_idempotent_from_every_clone_and_thread() {
    let store = Store::new();
    let e = store.open(store.quiet());
    e.set(b"k", b"v").unwrap();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (e, b) = (e.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                e.shutdown()
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    e.shutdown().unwrap();
    drop(e);
    assert_eq!(store.open(store.quiet()).get(b"k").unwrap().unwrap(), b"v");
}

#[test]
fn writes_racing_with_shutdown_are_kept_or_refused_never_lost() {
    let store = Store::new();
    let e = store.open(store.busy());
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads + 1));
    let started = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (e, b, started) = (e.clone(), barrier.clone(), started.clone());
            std::thread::spawn(move || {
                b.wait();
                let key = format!("writer-{t}");
                let mut acked = 0u64;
                for i in 1.. {
                    match e.set(key.as_bytes(), &u64::to_le_bytes(i)) {
                        Ok(()) => {
                            if acked == 0 {
                                started.fetch_add(1, Ordering::SeqCst);
                            }
                            acked = i;
                        }
                        Err(Error::Closed) => break,
                        Err(other) => panic!("unexpected error: {other}"),
                    }
                }
                acked
            })
        })
        .collect();
    barrier.wait();
    // Every writer is under way (on a loaded machine a thread may not run
    // for a while: wait for it rather than for a fixed time).
    eventually("every writer acknowledged a write", || {
        started.load(Ordering::SeqCst) == threads
    });
    std::thread::sleep(std::time::Duration::from_millis(30));
    e.shutdown().unwrap();
    let acked: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    drop(e);
    let e = store.open(store.quiet());
    for (t, acked) in acked.into_iter().enumerate() {
        assert!(acked > 0);
        let got = e.get(format!("writer-{t}").as_bytes()).unwrap().unwrap();
        assert_eq!(u64_value(&got), acked, "writer {t}");
    }
}

#[test]
fn writers_blocked_on_a_full_buffer_are_released_by_shutdown() {
    let store = Store::new();
    let e = store.open(store.quiet().max_dirty_bytes(64 * 1024));
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..400u32 {
                    let key = [t, (i >> 8) as u8, i as u8];
                    match e.set(&key, &[t; 1000]) {
                        Ok(()) => acked.push(key),
                        Err(Error::Closed) => break,
                        Err(other) => panic!("unexpected error: {other}"),
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(5));
    e.shutdown().unwrap();
    let acked: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    drop(e);
    let e = store.open(store.quiet());
    for key in acked {
        assert_eq!(e.get(&key).unwrap().unwrap(), vec![key[0]; 1000]);
    }
}
