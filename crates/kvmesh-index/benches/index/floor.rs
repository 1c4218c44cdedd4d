//! The random-line floor: what reading a lookup's cache lines costs on this host, right now.
//!
//! `ExactIndex` answers a lookup with one table probe per block of the matched prefix, plus
//! the blocks it prefetched past the end of the match: one random cache line each, prefetched
//! `LOOKUP_PREFETCH_AHEAD` (8) blocks ahead. On a large table those misses are the lookup's cost,
//! and what a miss costs depends on how much of the shared last-level cache and memory
//! bandwidth the host's other tenants leave (on the Zen 4 VM of `BENCH.md`'s runs K-N, 64
//! random lines from a 4 MiB buffer took 0.11 us in one run and 0.56 us in another, minutes
//! apart).
//!
//! The floor reads, for every query, the same number of random lines from a buffer as large as
//! the `ExactIndex`'s heap, with the same prefetch distance, and does nothing else. It is timed
//! in the same round-robin batches as the indexes, so a busy neighbour weighs on it alike:
//! `ExactIndex`'s p50 over the floor's p50 is how far the index is from the memory system's
//! limit for its access pattern, and the floor's own value says how busy the host was.

use std::hint::black_box;
use std::ops::Range;
use std::time::Instant;

use crate::workload::mix64;

/// How far ahead `ExactIndex` prefetches (its `LOOKUP_PREFETCH_AHEAD`, which is crate-private).
const AHEAD: usize = 8;

/// u64 words per 64-byte cache line.
const LINE_WORDS: usize = 8;

pub(crate) struct LineFloor {
    buffer: Vec<u64>,
    /// Per query: the word offsets of the lines it reads.
    lines: Vec<Vec<usize>>,
}

impl LineFloor {
    /// A floor for `ExactIndex` with `heap_bytes` of heap, whose walk of query `i` probed
    /// `probed[i]` blocks (the longest prefix any worker holds, plus the block that ended it)
    /// out of `lens[i]`.
    pub(crate) fn new(heap_bytes: usize, probed: &[usize], lens: &[usize], seed: u64) -> Self {
        let line_count = (heap_bytes / (LINE_WORDS * 8)).max(1);
        let buffer: Vec<u64> = (0..(line_count * LINE_WORDS) as u64).map(mix64).collect();
        let mut x = seed;
        let lines = probed
            .iter()
            .zip(lens)
            .map(|(&p, &len)| {
                (0..(p + AHEAD).min(len))
                    .map(|_| {
                        x = mix64(x.wrapping_add(1));
                        (x % line_count as u64) as usize * LINE_WORDS
                    })
                    .collect()
            })
            .collect();
        LineFloor { buffer, lines }
    }

    pub(crate) fn name(&self) -> String {
        let n = self.lines.iter().map(Vec::len).sum::<usize>() as f64 / self.lines.len() as f64;
        format!(
            "floor: {n:.0} random lines per query from {:.1} MiB",
            (self.buffer.len() * 8) as f64 / (1 << 20) as f64
        )
    }

    /// Times reading each query's lines in `range` once (ns), as `Subject::time_lookups`.
    pub(crate) fn time_lookups(&self, range: Range<usize>) -> Vec<u64> {
        let owned: Vec<Vec<usize>> = self.lines[range].to_vec();
        owned
            .iter()
            .map(|q| {
                let t = Instant::now();
                black_box(self.read(black_box(q)));
                t.elapsed().as_nanos() as u64
            })
            .collect()
    }

    /// Reads `lines` in order with the walk's prefetch pattern, branching on each word read
    /// as the walk branches on each bucket.
    fn read(&self, lines: &[usize]) -> u64 {
        lines.iter().take(AHEAD).for_each(|&l| self.prefetch(l));
        let mut odd = 0u64;
        for (i, &l) in lines.iter().enumerate() {
            if let Some(&a) = lines.get(i + AHEAD) {
                self.prefetch(a);
            }
            if self.buffer[l] & 1 == 1 {
                odd += 1;
            }
        }
        odd
    }

    #[inline(always)]
    fn prefetch(&self, word: usize) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint that cannot fault; the address is in bounds anyway.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(self.buffer.as_ptr().add(word).cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = word;
    }
}
