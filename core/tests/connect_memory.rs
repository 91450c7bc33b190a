//! Connection attempts to a broker that refuses them keep no memory.
//!
//! While RabbitMQ is down every publisher, consumer and subscription of a
//! process retries its connection, for as long as the outage lasts. lapin
//! 4.12 keeps about 10 KiB for ever from each attempt whose TCP connect
//! fails, so Ferry tries the port itself before calling lapin
//! (`broker::connect`). This binary counts the bytes its allocations hold
//! (it is its own process, with this one test), makes 500 refused attempts
//! through the public API, and checks that they left almost nothing behind.
//! No broker is needed: the port is one nothing listens on.

#![allow(unsafe_code)] // a counting global allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use ferry_core::broker::Queue;

/// Bytes the process's allocations hold now.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; only the
// sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ATTEMPTS: usize = 500;
/// What 500 attempts may leave behind: lapin's leak alone would be ~4 MB.
const KEPT_AT_MOST: isize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_attempts_keep_no_memory() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let queue = Queue::amqp(
        &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        "ferry.connect-memory",
    );
    // The first attempts set up what lives as long as the process.
    for _ in 0..20 {
        assert!(queue.ping().await.is_err(), "nothing listens on {port}");
    }
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..ATTEMPTS {
        assert!(queue.ping().await.is_err(), "nothing listens on {port}");
    }
    // Whatever an attempt hands to a background task has had time to end.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let kept = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        kept < KEPT_AT_MOST,
        "{ATTEMPTS} refused connection attempts kept {kept} bytes (at most {KEPT_AT_MOST})"
    );
}
