//! A counting global allocator: live heap bytes, as requested and as glibc would charge them.
//! Each index is charged with the net change while it is being called (see `Heap::charge`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

struct Counting;

pub(crate) static COUNT_ALLOC: AtomicBool = AtomicBool::new(true);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static LIVE_MALLOC: AtomicIsize = AtomicIsize::new(0);

/// glibc malloc's chunk size for a request (x86-64): 8-byte header, 16-byte multiple, 32 min.
pub(crate) fn chunk(size: usize) -> isize {
    ((size + 8 + 15) & !15).max(32) as isize
}

fn count(size: usize, sign: isize) {
    if COUNT_ALLOC.load(Relaxed) {
        LIVE.fetch_add(sign * size as isize, Relaxed);
        LIVE_MALLOC.fetch_add(sign * chunk(size), Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees carry over; the counters are plain atomics and never touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this wrapper) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        count(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s size contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(layout.size(), -1);
            count(new_size, 1);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live heap bytes: (requested, with malloc's per-chunk cost).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Heap {
    pub(crate) bytes: isize,
    pub(crate) malloc: isize,
}

impl Heap {
    pub(crate) fn now() -> Heap {
        Heap {
            bytes: LIVE.load(Relaxed),
            malloc: LIVE_MALLOC.load(Relaxed),
        }
    }

    /// Charges `self` with what changed since `before`, plus `handed` (bytes of events moved
    /// into the index, allocated before the window opened).
    pub(crate) fn charge(&mut self, before: Heap, handed: Heap) {
        let now = Heap::now();
        self.bytes += now.bytes - before.bytes + handed.bytes;
        self.malloc += now.malloc - before.malloc + handed.malloc;
    }
}
