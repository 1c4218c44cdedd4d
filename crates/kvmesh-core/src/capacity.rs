//! Capacity planning: how much KV cache fits in an accelerator, and what paging buys.
//!
//! Pure arithmetic over a [`KvGeometry`]; no IO. `kvmesh calc` prints what this module computes.
//!
//! # Memory budget
//!
//! [`MemoryBudget`] follows vLLM's `gpu_memory_utilization`: the engine may use
//! `device bytes x utilisation`, and the model weights come out of that share, so
//! `KV budget = floor(device x utilisation) - weights`. Activations, the CUDA graph pool and
//! allocator slack are not modelled; put them in the weights figure (or lower the utilisation)
//! when they matter. Weights that leave nothing for KV are an error, not a zero.
//!
//! # Capacity
//!
//! [`KvCapacity`] counts whole blocks: `blocks_fit = floor(KV budget / bytes per block)` and
//! `tokens_fit = blocks_fit x block size`, because a paged pool cannot use a partial block.
//! [`KvCapacity::max_concurrency`] is how many sequences of one context length fit at once when
//! each holds `ceil(context / block size)` blocks.
//!
//! # Allocation model
//!
//! Each request's KV footprint is its final length, input plus output tokens; prefix sharing
//! between requests is ignored (it only helps paging). [`compare_allocation`] sets two
//! allocators side by side over a distribution of such lengths:
//!
//! * **Contiguous pre-allocation** reserves `reserve_len` tokens per request up front, because it
//!   cannot grow a region once neighbours are placed. A system must reserve for the longest
//!   request it admits, so the natural `reserve_len` is the longest request in the distribution.
//!   Utilisation is `mean(min(len, reserve_len)) / reserve_len` (equal to
//!   `mean(len) / reserve_len` when every request fits) and concurrency is
//!   `floor(KV tokens / reserve_len)`, with KV tokens counted without block rounding. Requests
//!   longer than the reservation could not be served; they are counted in
//!   [`AllocationComparison::over_reservation`].
//! * **Paged allocation** gives each request `ceil(len / block_size)` blocks, so only the last
//!   block of a request wastes space. Utilisation is `sum(len) / sum(blocks x block_size)` and
//!   concurrency is `floor(KV blocks / mean blocks per request)`.
//!
//! Trade-offs of the model: it is a steady-state average, not a simulation. It assumes the mix of
//! running requests matches the distribution (a scheduler that favours short requests does
//! better), that every request reaches its final length while resident (decoding requests grow
//! into it, so paged concurrency early in a request's life is higher), and that no memory is
//! held back for preemption headroom. Its numbers are upper bounds for both allocators; the
//! simulator in kvmesh-sim measures the rest.

use std::fmt;

use crate::geometry::KvGeometry;

const GIB: f64 = (1u64 << 30) as f64;

/// Inputs or results that cannot make a capacity plan.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CapacityError {
    /// A memory size is negative, not finite, or too large for 64 bits.
    InvalidMemory {
        /// What the size was for (`"accelerator memory"`, `"weights"`).
        what: &'static str,
        /// The size given, in GiB.
        gib: f64,
    },
    /// The utilisation fraction is not in `(0, 1]`.
    InvalidUtilization(f64),
    /// The weights take the whole usable memory (or more).
    WeightsExceedBudget {
        /// Bytes of weights.
        weights_bytes: u64,
        /// Bytes the engine may use (device x utilisation).
        usable_bytes: u64,
    },
    /// The KV budget holds less than one block.
    BudgetBelowOneBlock {
        /// Bytes left for KV.
        kv_budget_bytes: u64,
        /// Bytes of one block.
        bytes_per_block: u64,
    },
    /// A length that must be positive is zero (context length, reservation, a mean).
    ZeroLength {
        /// Which length.
        what: &'static str,
    },
    /// The length distribution has no requests, or only empty ones.
    EmptyDistribution,
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapacityError::InvalidMemory { what, gib } => {
                write!(f, "{what} of {gib} GiB is not a usable size")
            }
            CapacityError::InvalidUtilization(u) => {
                write!(f, "memory utilisation {u} must be above 0 and at most 1")
            }
            CapacityError::WeightsExceedBudget {
                weights_bytes: 0,
                usable_bytes,
            } => write!(
                f,
                "no memory for KV: accelerator memory x utilisation is {usable_bytes} bytes"
            ),
            CapacityError::WeightsExceedBudget {
                weights_bytes,
                usable_bytes,
            } => write!(
                f,
                "weights of {weights_bytes} bytes leave no KV budget: only {usable_bytes} bytes \
                 are usable (accelerator memory x utilisation)"
            ),
            CapacityError::BudgetBelowOneBlock {
                kv_budget_bytes,
                bytes_per_block,
            } => write!(
                f,
                "KV budget of {kv_budget_bytes} bytes holds no block of {bytes_per_block} bytes"
            ),
            CapacityError::ZeroLength { what } => write!(f, "{what} must be at least 1 token"),
            CapacityError::EmptyDistribution => {
                f.write_str("the length distribution has no non-empty requests")
            }
        }
    }
}

impl std::error::Error for CapacityError {}

/// Accelerator memory, the share an engine may use, and what the weights take of it.
///
/// ```
/// use kvmesh_core::MemoryBudget;
/// let b = MemoryBudget::from_gib(80.0, 0.9, 16.0).unwrap();
/// assert_eq!(b.kv_budget_bytes().unwrap(), (72 - 16) << 30);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryBudget {
    device_bytes: u64,
    utilization: f64,
    weights_bytes: u64,
}

impl MemoryBudget {
    /// A budget from sizes in bytes. `utilization` must be in `(0, 1]`.
    pub fn new(
        device_bytes: u64,
        utilization: f64,
        weights_bytes: u64,
    ) -> Result<Self, CapacityError> {
        if !(utilization > 0.0 && utilization <= 1.0) {
            return Err(CapacityError::InvalidUtilization(utilization));
        }
        Ok(MemoryBudget {
            device_bytes,
            utilization,
            weights_bytes,
        })
    }

    /// A budget from sizes in GiB (2^30 bytes), as `kvmesh calc` takes them.
    pub fn from_gib(
        device_gib: f64,
        utilization: f64,
        weights_gib: f64,
    ) -> Result<Self, CapacityError> {
        MemoryBudget::new(
            gib_to_bytes("accelerator memory", device_gib)?,
            utilization,
            gib_to_bytes("weights", weights_gib)?,
        )
    }

    /// Accelerator memory in bytes.
    pub fn device_bytes(&self) -> u64 {
        self.device_bytes
    }

    /// The fraction of it the engine may use.
    pub fn utilization(&self) -> f64 {
        self.utilization
    }

    /// Bytes of weights, subtracted from the usable share.
    pub fn weights_bytes(&self) -> u64 {
        self.weights_bytes
    }

    /// `floor(device x utilisation)`: what the engine may use, weights included.
    pub fn usable_bytes(&self) -> u64 {
        // f64 is exact to 2^53 bytes (8 PiB); beyond that the floor is off by a few bytes.
        (self.device_bytes as f64 * self.utilization).floor() as u64
    }

    /// Bytes left for the KV cache; an error when the weights take everything.
    pub fn kv_budget_bytes(&self) -> Result<u64, CapacityError> {
        let usable = self.usable_bytes();
        match usable.checked_sub(self.weights_bytes) {
            Some(kv) if kv > 0 => Ok(kv),
            _ => Err(CapacityError::WeightsExceedBudget {
                weights_bytes: self.weights_bytes,
                usable_bytes: usable,
            }),
        }
    }
}

fn gib_to_bytes(what: &'static str, gib: f64) -> Result<u64, CapacityError> {
    let bytes = gib * GIB;
    // `u64::MAX as f64` rounds up to 2^64, so compare strictly below it.
    if !(gib >= 0.0 && bytes < u64::MAX as f64) {
        return Err(CapacityError::InvalidMemory { what, gib });
    }
    Ok(bytes.floor() as u64)
}

/// What one KV budget holds for one geometry.
///
/// ```
/// use kvmesh_core::{find_preset, KvCapacity, KvDtype, KvGeometry};
/// let g = KvGeometry::new(find_preset("llama-3-70b").unwrap().dims, KvDtype::F16, 16).unwrap();
/// let cap = KvCapacity::new(&g, 72 << 30).unwrap();
/// assert_eq!(cap.blocks_fit(), 14_745);               // 72 GiB / 5 MiB per block
/// assert_eq!(cap.tokens_fit(), 14_745 * 16);
/// assert_eq!(cap.max_concurrency(8192).unwrap(), 28); // 512 blocks per 8k sequence
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCapacity {
    bytes_per_token: u64,
    bytes_per_block: u64,
    block_size: u32,
    kv_budget_bytes: u64,
    blocks_fit: u64,
}

impl KvCapacity {
    /// The capacity of `kv_budget_bytes` for `geometry`; an error if not even one block fits.
    pub fn new(geometry: &KvGeometry, kv_budget_bytes: u64) -> Result<Self, CapacityError> {
        let blocks_fit = geometry.blocks_in(kv_budget_bytes);
        if blocks_fit == 0 {
            return Err(CapacityError::BudgetBelowOneBlock {
                kv_budget_bytes,
                bytes_per_block: geometry.bytes_per_block(),
            });
        }
        Ok(KvCapacity {
            bytes_per_token: geometry.bytes_per_token(),
            bytes_per_block: geometry.bytes_per_block(),
            block_size: geometry.block_size(),
            kv_budget_bytes,
            blocks_fit,
        })
    }

    /// Bytes per token, scales included.
    pub fn bytes_per_token(&self) -> u64 {
        self.bytes_per_token
    }

    /// Bytes per block.
    pub fn bytes_per_block(&self) -> u64 {
        self.bytes_per_block
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The KV budget this was computed for.
    pub fn kv_budget_bytes(&self) -> u64 {
        self.kv_budget_bytes
    }

    /// Whole blocks that fit in the budget (at least 1).
    pub fn blocks_fit(&self) -> u64 {
        self.blocks_fit
    }

    /// Tokens in those blocks: `blocks_fit x block_size`.
    pub fn tokens_fit(&self) -> u64 {
        self.blocks_fit * u64::from(self.block_size)
    }

    /// Tokens that fit without block rounding, `floor(budget / bytes per token)`: what a
    /// contiguous allocator can use.
    pub fn contiguous_tokens_fit(&self) -> u64 {
        self.kv_budget_bytes / self.bytes_per_token
    }

    /// Blocks one sequence of `tokens` tokens holds: `ceil(tokens / block_size)`.
    pub fn blocks_for(&self, tokens: u64) -> u64 {
        tokens.div_ceil(u64::from(self.block_size))
    }

    /// Sequences of `context_len` tokens that fit at once, each in its own whole blocks.
    pub fn max_concurrency(&self, context_len: u64) -> Result<u64, CapacityError> {
        if context_len == 0 {
            return Err(CapacityError::ZeroLength {
                what: "context length",
            });
        }
        Ok(self.blocks_fit / self.blocks_for(context_len))
    }
}

/// Count, mean and nearest-rank percentiles of a list of request lengths.
///
/// ```
/// let s = kvmesh_core::LengthStats::from_lengths(&[4, 1, 3, 2]).unwrap();
/// assert_eq!((s.count, s.p50, s.p99, s.max, s.total), (4, 2, 4, 4, 10));
/// assert_eq!(s.mean, 2.5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LengthStats {
    /// Number of requests.
    pub count: u64,
    /// Sum of lengths.
    pub total: u128,
    /// Arithmetic mean.
    pub mean: f64,
    /// Shortest.
    pub min: u64,
    /// Median (nearest rank: the smallest length with at least half the requests at or below).
    pub p50: u64,
    /// 99th percentile (nearest rank).
    pub p99: u64,
    /// Longest.
    pub max: u64,
}

impl LengthStats {
    /// Statistics of `lengths`; an error when the list is empty.
    pub fn from_lengths(lengths: &[u64]) -> Result<Self, CapacityError> {
        if lengths.is_empty() {
            return Err(CapacityError::EmptyDistribution);
        }
        let mut sorted = lengths.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let total: u128 = sorted.iter().map(|&l| u128::from(l)).sum();
        // Nearest rank: index ceil(p/100 x n) - 1, computed in integers.
        let rank = |p: usize| (p * n).div_ceil(100).max(1) - 1;
        Ok(LengthStats {
            count: n as u64,
            total,
            mean: total as f64 / n as f64,
            min: sorted[0],
            p50: sorted[rank(50)],
            p99: sorted[rank(99)],
            max: sorted[n - 1],
        })
    }
}

/// One allocator's result in [`compare_allocation`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AllocationResult {
    /// Tokens stored / tokens reserved, in `[0, 1]`.
    pub utilization: f64,
    /// Requests that fit at once.
    pub max_concurrency: u64,
    /// Tokens reserved per request on average (the reservation, or blocks x block size).
    pub reserved_tokens_per_request: f64,
}

/// Contiguous pre-allocation against paged allocation over one length distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AllocationComparison {
    /// Tokens reserved per request by the contiguous allocator.
    pub reserve_len: u64,
    /// Tokens per block of the paged allocator.
    pub block_size: u32,
    /// Requests longer than `reserve_len`, which contiguous allocation could not serve.
    pub over_reservation: u64,
    /// Contiguous pre-allocation of `reserve_len` tokens per request.
    pub contiguous: AllocationResult,
    /// Paged allocation of `ceil(len / block_size)` blocks per request.
    pub paged: AllocationResult,
}

impl AllocationComparison {
    /// Paged concurrency over contiguous concurrency; `None` when contiguous fits no request.
    pub fn concurrency_gain(&self) -> Option<f64> {
        (self.contiguous.max_concurrency > 0)
            .then(|| self.paged.max_concurrency as f64 / self.contiguous.max_concurrency as f64)
    }
}

/// Compares contiguous pre-allocation with paged allocation for requests of `lengths` tokens
/// (each its final length, input + output) in `capacity`.
///
/// * Contiguous reserves `reserve_len` tokens per request (normally the longest length):
///   utilisation `mean(min(len, reserve_len)) / reserve_len`, concurrency
///   `floor(capacity.contiguous_tokens_fit() / reserve_len)`; longer requests are counted in
///   [`AllocationComparison::over_reservation`].
/// * Paged gives each request `ceil(len / block_size)` blocks: utilisation
///   `sum(len) / sum(blocks x block_size)`, concurrency `floor(blocks_fit / mean blocks)`.
///
/// Both are steady-state upper bounds: every resident request at its final length, no prefix
/// sharing, no preemption headroom. Pass one length, the mean, to model a distribution known
/// only by its mean. Errors on an empty (or all-zero) distribution and a zero reservation.
///
/// ```
/// use kvmesh_core::{compare_allocation, find_preset, KvCapacity, KvDtype, KvGeometry};
/// let g = KvGeometry::new(find_preset("llama-3-8b").unwrap().dims, KvDtype::F16, 16).unwrap();
/// let cap = KvCapacity::new(&g, 1 << 30).unwrap();        // 8,192 tokens
/// let c = compare_allocation(&[1000, 3000], 4000, &cap).unwrap();
/// assert_eq!(c.contiguous.max_concurrency, 2);             // 8,192 / 4,000
/// assert_eq!(c.contiguous.utilization, 0.5);               // 2,000 / 4,000
/// assert_eq!(c.paged.max_concurrency, 4);                  // 512 blocks / (63 + 188) / 2
/// ```
pub fn compare_allocation(
    lengths: &[u64],
    reserve_len: u64,
    capacity: &KvCapacity,
) -> Result<AllocationComparison, CapacityError> {
    if reserve_len == 0 {
        return Err(CapacityError::ZeroLength {
            what: "reserved length",
        });
    }
    if lengths.is_empty() {
        return Err(CapacityError::EmptyDistribution);
    }
    let n = lengths.len() as u128;
    let block_size = u128::from(capacity.block_size());
    let (mut used_contiguous, mut sum_len, mut sum_blocks, mut over) = (0u128, 0u128, 0u128, 0u64);
    for &len in lengths {
        used_contiguous += u128::from(len.min(reserve_len));
        sum_len += u128::from(len);
        sum_blocks += u128::from(len).div_ceil(block_size);
        over += u64::from(len > reserve_len);
    }
    if sum_blocks == 0 {
        return Err(CapacityError::EmptyDistribution);
    }
    let contiguous = AllocationResult {
        utilization: used_contiguous as f64 / (n * u128::from(reserve_len)) as f64,
        max_concurrency: capacity.contiguous_tokens_fit() / reserve_len,
        reserved_tokens_per_request: reserve_len as f64,
    };
    let reserved_paged = sum_blocks * block_size;
    let paged = AllocationResult {
        utilization: sum_len as f64 / reserved_paged as f64,
        // floor(blocks / (sum_blocks / n)) without rounding the mean.
        max_concurrency: u64::try_from(u128::from(capacity.blocks_fit()) * n / sum_blocks)
            .unwrap_or(u64::MAX),
        reserved_tokens_per_request: reserved_paged as f64 / n as f64,
    };
    Ok(AllocationComparison {
        reserve_len,
        block_size: capacity.block_size(),
        over_reservation: over,
        contiguous,
        paged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{find_preset, KvDtype, ModelDims};

    fn geometry(name: &str, dtype: KvDtype, block_size: u32) -> KvGeometry {
        KvGeometry::new(find_preset(name).unwrap().dims, dtype, block_size).unwrap()
    }

    /// 1 layer, 1 KV head, head dim 8, f16: 2 x 8 x 2 = 32 bytes per token.
    fn tiny(block_size: u32) -> KvGeometry {
        let dims = ModelDims {
            num_layers: 1,
            num_query_heads: 1,
            num_kv_heads: 1,
            head_dim: 8,
            max_context: None,
        };
        KvGeometry::new(dims, KvDtype::F16, block_size).unwrap()
    }

    #[test]
    fn budget_subtracts_weights_after_utilisation() {
        let b = MemoryBudget::from_gib(80.0, 0.9, 0.0).unwrap();
        assert_eq!(b.device_bytes(), 85_899_345_920);
        assert_eq!(b.usable_bytes(), 77_309_411_328); // 72 GiB
        assert_eq!(b.kv_budget_bytes().unwrap(), 77_309_411_328);
        let b = MemoryBudget::new(1000, 0.5, 100).unwrap();
        assert_eq!(b.kv_budget_bytes().unwrap(), 400);
        let b = MemoryBudget::from_gib(24.0, 1.0, 0.5).unwrap();
        assert_eq!(b.kv_budget_bytes().unwrap(), (47u64 << 30) / 2);
    }

    #[test]
    fn budget_errors() {
        let err = MemoryBudget::new(1000, 0.5, 500)
            .unwrap()
            .kv_budget_bytes()
            .unwrap_err();
        assert_eq!(
            err,
            CapacityError::WeightsExceedBudget {
                weights_bytes: 500,
                usable_bytes: 500
            }
        );
        assert!(err.to_string().contains("leave no KV budget"), "{err}");
        let err = MemoryBudget::from_gib(80.0, 0.9, 140.0)
            .unwrap()
            .kv_budget_bytes();
        assert!(matches!(
            err,
            Err(CapacityError::WeightsExceedBudget { .. })
        ));
        for util in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                MemoryBudget::new(1, util, 0),
                Err(CapacityError::InvalidUtilization(_))
            ));
        }
        for gib in [-1.0, f64::NAN, f64::INFINITY, 1e12] {
            assert!(matches!(
                MemoryBudget::from_gib(gib, 0.9, 0.0),
                Err(CapacityError::InvalidMemory { .. })
            ));
        }
        assert!(MemoryBudget::from_gib(0.0, 0.9, 0.0)
            .unwrap()
            .kv_budget_bytes()
            .is_err());
    }

    #[test]
    fn capacity_of_llama_3_70b_in_72_gib() {
        let g = geometry("llama-3-70b", KvDtype::F16, 16);
        let cap = KvCapacity::new(&g, 72 << 30).unwrap();
        assert_eq!(cap.bytes_per_token(), 327_680);
        assert_eq!(cap.bytes_per_block(), 5 << 20);
        // 72 GiB / 5 MiB = 14,745.6 -> 14,745 whole blocks.
        assert_eq!(cap.blocks_fit(), 14_745);
        assert_eq!(cap.tokens_fit(), 235_920);
        // Without block rounding: 77,309,411,328 / 327,680 = 235,929.6.
        assert_eq!(cap.contiguous_tokens_fit(), 235_929);
        assert_eq!(cap.max_concurrency(8192).unwrap(), 28); // 14,745 / 512
        assert_eq!(cap.max_concurrency(8193).unwrap(), 28); // 14,745 / 513
        assert_eq!(cap.max_concurrency(1).unwrap(), 14_745);
        assert!(cap.max_concurrency(0).is_err());
    }

    #[test]
    fn capacity_needs_one_block() {
        let g = tiny(4); // 128 bytes per block
        assert_eq!(KvCapacity::new(&g, 128).unwrap().blocks_fit(), 1);
        assert_eq!(
            KvCapacity::new(&g, 127).unwrap_err(),
            CapacityError::BudgetBelowOneBlock {
                kv_budget_bytes: 127,
                bytes_per_block: 128
            }
        );
    }

    #[test]
    fn length_stats_nearest_rank() {
        let lengths: Vec<u64> = (1..=200).rev().collect();
        let s = LengthStats::from_lengths(&lengths).unwrap();
        assert_eq!((s.count, s.min, s.max), (200, 1, 200));
        assert_eq!(s.mean, 100.5);
        assert_eq!(s.p50, 100); // rank ceil(0.5 x 200) = 100
        assert_eq!(s.p99, 198); // rank ceil(0.99 x 200) = 198
        let one = LengthStats::from_lengths(&[7]).unwrap();
        assert_eq!((one.p50, one.p99, one.mean), (7, 7, 7.0));
        assert_eq!(
            LengthStats::from_lengths(&[]).unwrap_err(),
            CapacityError::EmptyDistribution
        );
    }

    #[test]
    fn allocation_by_hand() {
        // 32 B/token, 16-token blocks of 512 B, budget 100 blocks = 1,600 tokens.
        let cap = KvCapacity::new(&tiny(16), 51_200).unwrap();
        assert_eq!(
            (cap.blocks_fit(), cap.contiguous_tokens_fit()),
            (100, 1_600)
        );
        // Lengths 10, 20, 100, 270: sum 400, mean 100; blocks 1 + 2 + 7 + 17 = 27.
        let lengths = [10, 20, 100, 270];
        let c = compare_allocation(&lengths, 270, &cap).unwrap();
        assert_eq!(c.over_reservation, 0);
        assert!((c.contiguous.utilization - 100.0 / 270.0).abs() < 1e-12);
        assert_eq!(c.contiguous.max_concurrency, 5); // 1,600 / 270
        assert!((c.paged.utilization - 400.0 / 432.0).abs() < 1e-12);
        assert_eq!(c.paged.max_concurrency, 14); // 100 / (27 / 4) = 14.8
        assert_eq!(c.paged.reserved_tokens_per_request, 108.0);
        assert!((c.concurrency_gain().unwrap() - 14.0 / 5.0).abs() < 1e-12);

        // A 100-token reservation: 270 is over it and counts only 100 of its tokens.
        let c = compare_allocation(&lengths, 100, &cap).unwrap();
        assert_eq!(c.over_reservation, 1);
        assert!((c.contiguous.utilization - 230.0 / 400.0).abs() < 1e-12);
        assert_eq!(c.contiguous.max_concurrency, 16);
    }

    #[test]
    fn seed_claim_shape_when_lengths_are_uniform() {
        // Uniform lengths 1..=2048 reserved at 2,048: contiguous ~50% and paged ~99%.
        let cap = KvCapacity::new(&tiny(16), 32 * 8192).unwrap();
        let lengths: Vec<u64> = (1..=2048).collect();
        let c = compare_allocation(&lengths, 2048, &cap).unwrap();
        assert!((c.contiguous.utilization - 2049.0 / 4096.0).abs() < 1e-12);
        assert_eq!(c.contiguous.max_concurrency, 4);
        assert!(c.paged.utilization > 0.99, "{}", c.paged.utilization);
        assert_eq!(c.paged.max_concurrency, 7);
    }

    #[test]
    fn allocation_edge_cases() {
        let cap = KvCapacity::new(&tiny(16), 512).unwrap(); // one block, 16 tokens
        assert_eq!(
            compare_allocation(&[], 10, &cap).unwrap_err(),
            CapacityError::EmptyDistribution
        );
        assert_eq!(
            compare_allocation(&[0, 0], 10, &cap).unwrap_err(),
            CapacityError::EmptyDistribution
        );
        assert!(matches!(
            compare_allocation(&[5], 0, &cap),
            Err(CapacityError::ZeroLength { .. })
        ));
        // Longer than the whole budget: no request fits either way, and nothing panics.
        let c = compare_allocation(&[u64::MAX, 100], 1_000, &cap).unwrap();
        assert_eq!(c.contiguous.max_concurrency, 0);
        assert_eq!(c.paged.max_concurrency, 0);
        assert_eq!(c.concurrency_gain(), None);
        assert_eq!(c.over_reservation, 1);
    }
}
