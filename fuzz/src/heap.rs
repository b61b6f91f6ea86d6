//! A counting global allocator (current and peak live bytes), installed by the
//! `header_manifest` target binary: the target asserts that decoding a manifest never holds
//! more heap than its header declares. Where it is not installed (the regression replay in the
//! main crate's tests) the counters stay at zero and the check passes trivially.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static CURRENT: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

/// The allocator: `System`, with the live bytes counted.
pub struct Counting;

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n as u64, Relaxed) + n as u64;
    PEAK.fetch_max(now, Relaxed);
}

fn shrink(n: usize) {
    CURRENT.fetch_sub(n as u64, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and only adds
// bookkeeping on atomics, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grow(l.size());
        // SAFETY: the caller upholds `alloc`'s contract for `l`.
        unsafe { System.alloc(l) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        grow(l.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by `System` with layout `l`.
        unsafe { System.dealloc(p, l) };
        shrink(l.size());
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        // Counted as the move it may be: both blocks live at once.
        grow(new_size);
        // SAFETY: `p` was allocated by `System` with layout `l`; the caller upholds the rest.
        let q = unsafe { System.realloc(p, l, new_size) };
        shrink(if q.is_null() { new_size } else { l.size() });
        q
    }
}

/// Run `f`; return its result and the most heap it held at once beyond what was live before
/// (0 when [`Counting`] is not the global allocator). Single-threaded callers only.
pub fn peak_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let r = f();
    (r, PEAK.load(Relaxed).saturating_sub(base))
}
