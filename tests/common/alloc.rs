//! A counting global allocator: records every allocation made (on any thread) while
//! [`count`] runs. A test binary installs it with
//! `#[global_allocator] static A: Counting = Counting;` and keeps one test, so that no
//! other test allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting.
pub struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static TOTAL: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn record(size: usize) {
    if ON.load(Relaxed) {
        TOTAL.fetch_add(size, Relaxed);
        LARGEST.fetch_max(size, Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        record(l.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        record(l.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        record(new);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
}

/// `(total bytes, largest allocation)` made while `f` runs (counted only in a binary
/// that installs [`Counting`]). The current rayon pool's workers are started first
/// (`broadcast` runs on each): a worker that is still starting up allocates its job
/// queues, which would be counted as the kernel's.
pub fn count(f: impl FnOnce()) -> (usize, usize) {
    rayon::broadcast(|_| ());
    TOTAL.store(0, Relaxed);
    LARGEST.store(0, Relaxed);
    ON.store(true, Relaxed);
    f();
    ON.store(false, Relaxed);
    (TOTAL.load(Relaxed), LARGEST.load(Relaxed))
}
