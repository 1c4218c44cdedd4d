//! A fixed-size log-linear histogram of nanosecond durations.
//!
//! Inter-token gaps number one per generated token (4 million for the Mooncake trace), so they
//! are counted, not stored: values below 128 ns have a bucket each; above, each power of two
//! is cut into 64 linear sub-buckets (HdrHistogram's layout with 6 significant bits), so a
//! reported percentile is within 1/64 (1.6%) of the true value. 58 powers of two cover
//! `u64`; the table is 3,776 counters (30 KiB), whatever the run's length.

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const LINEAR: u64 = 2 * SUB;
const BUCKETS: usize = (LINEAR + (64 - SUB_BITS as u64 - 1) * SUB) as usize;

/// Counts of durations in log-linear buckets.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: f64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0.0,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = exp - SUB_BITS;
    let sub = (v >> shift) - SUB; // 0..SUB
    (LINEAR + u64::from(exp - SUB_BITS - 1) * SUB + sub) as usize
}

/// The midpoint of bucket `b`.
fn value(b: usize) -> f64 {
    let b = b as u64;
    if b < LINEAR {
        return b as f64;
    }
    let exp = (b - LINEAR) / SUB + u64::from(SUB_BITS) + 1;
    let sub = (b - LINEAR) % SUB + SUB;
    let shift = exp - u64::from(SUB_BITS);
    let low = (sub << shift) as f64;
    low + (1u64 << shift) as f64 / 2.0
}

impl Histogram {
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.total += 1;
        self.sum += v as f64;
        self.max = self.max.max(v);
    }

    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    pub(crate) fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum / self.total as f64
        }
    }

    /// The value at quantile `q` in `[0, 1]` (nearest rank), 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(b).min(self.max as f64);
            }
        }
        self.max as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotone_and_tight() {
        let mut last = 0;
        for v in (0..200_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let b = bucket(v);
            assert!(b >= last && b < BUCKETS, "{v}");
            last = b;
            let mid = value(b);
            assert!(
                (mid - v as f64).abs() <= v as f64 / 64.0 + 0.5,
                "{v} -> {mid}"
            );
        }
    }

    #[test]
    fn quantiles_within_two_percent() {
        let mut h = Histogram::default();
        let mut exact: Vec<u64> = (1..=10_000u64).map(|i| i * i * 37).collect();
        for &v in &exact {
            h.record(v);
        }
        exact.sort_unstable();
        for q in [0.5, 0.9, 0.99] {
            let want = exact[(q * exact.len() as f64).ceil() as usize - 1] as f64;
            let got = h.quantile(q);
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.len(), 10_000);
        assert_eq!(Histogram::default().quantile(0.5), 0.0);
    }
}
