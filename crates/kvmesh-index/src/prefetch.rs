//! Software prefetch: the crate's one use of `unsafe`.
//!
//! On a large index every table probe is a cache miss. A prefetch instruction starts the miss
//! and retires at once, so many misses overlap while the core keeps working (a plain load
//! used as a stand-in holds the reorder window until it completes: see `exact.rs`).
//!
//! x86-64 only: stable Rust has no portable prefetch, so elsewhere this is a no-op and the
//! index is as correct, only slower on large tables. The rest of the crate denies `unsafe`.
#![allow(unsafe_code)]

/// Asks the CPU to bring the cache line holding `*r` into L1.
#[inline(always)]
pub(crate) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint. It has no effect on the program's state and cannot fault,
    // and the address comes from a live reference anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
