//! Transparent huge pages for the engine's big, long-lived regions: the KV cache and the
//! packed weights.
//!
//! Batched decode reads every cached token of every running sequence at every step, as runs
//! of a few KiB scattered over the whole KV region (a block's key run for one layer and head
//! is `block_size x head_dim` elements; the next block of the sequence is anywhere). With
//! 4 KiB pages nearly every run is a TLB miss and a page walk: measured on the project's
//! 2-core VM, 30 layers x 16 sequences x 512 tokens of f16 KV read at ~3.7 GB/s on one core
//! against ~11 GB/s for a streaming sum. 2 MiB pages cover the same region with 512 times
//! fewer TLB entries.
//!
//! Linux backs anonymous memory with huge pages either always or only where the process asks
//! (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`, the common default). So
//! [`advise_huge_pages`] asks, with `madvise(MADV_HUGEPAGE)`, for the 2 MiB-aligned part of a
//! region *before* it is first touched (the page faults then allocate huge pages; advice given
//! after the fact is only acted on later by `khugepaged`). It is advice: failure (an old
//! kernel, THP disabled, another OS) changes speed, never results, so it is ignored.
//!
//! Measured with a temporary harness (16 sequences x 512 tokens x 30 layers of f16 KV,
//! decode attention on one core, alternating runs on the shared VM): with the advice the
//! step took ~33-46 ms, without ~47-52 ms; `AnonHugePages` in `/proc/<pid>/smaps_rollup`
//! showed the region backed by huge pages.

/// A vector of `len` copies of `value`, backed by huge pages where the OS allows: the memory
/// is advised before the fill touches it. Every element is written here, so the whole region
/// is committed at once: right for packed weights, which are filled at load anyway. The KV
/// cache, committed lazily, allocates zeroed memory and advises it instead (`kv_cache.rs`).
pub(crate) fn huge_vec<T: Clone>(len: usize, value: T) -> Vec<T> {
    let mut data = Vec::with_capacity(len);
    advise_huge_pages(data.spare_capacity_mut());
    data.resize(len, value);
    data
}

/// The huge page size on x86_64 and aarch64 Linux with 4 KiB base pages.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the 2 MiB-aligned interior of `region` with transparent huge
/// pages. Call it on freshly allocated, untouched memory (e.g. the spare capacity of a new
/// `Vec`). Regions smaller than two huge pages are left alone.
pub(crate) fn advise_huge_pages<T>(region: &mut [T]) {
    let start = region.as_mut_ptr() as usize;
    let end = start + size_of_val(region);
    let aligned_start = start.next_multiple_of(HUGE_PAGE);
    let aligned_end = end / HUGE_PAGE * HUGE_PAGE;
    if aligned_end <= aligned_start || aligned_end - aligned_start < 2 * HUGE_PAGE {
        return;
    }
    madvise_huge(aligned_start, aligned_end - aligned_start);
}

#[cfg(target_os = "linux")]
fn madvise_huge(start: usize, len: usize) {
    use std::ffi::{c_int, c_void};
    /// `MADV_HUGEPAGE` from `<sys/mman.h>` (the same value on every Linux architecture).
    const MADV_HUGEPAGE: c_int = 14;
    extern "C" {
        fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
    }
    // SAFETY: `start..start + len` lies inside a live allocation the caller holds `&mut` to
    // (it was derived from that slice and only shrunk to page boundaries), and
    // MADV_HUGEPAGE changes how the kernel backs those pages, never their contents or
    // validity. The return value is advice-only: an error leaves the pages as they were.
    let _ = unsafe { madvise(start as *mut c_void, len, MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn madvise_huge(_start: usize, _len: usize) {}
