//! The simulator's input: requests with arrival times, lengths and prompt block hashes.
//!
//! A [`Workload`] is a list of [`Request`]s sorted by arrival, all hashed at one engine block
//! size. It comes from a trace ([`Workload::load_mooncake`], [`Workload::load_azure`], or the
//! in-memory `from_*` forms) or a generator ([`crate::generate`]); every source describes a
//! prompt as [`Segment`]s and [`BlockMapper`] turns those into chained
//! [`SequenceHash`]es (see its module for the mapping).
//!
//! [`Workload::ideal`] gives the **ideal block hit ratio**: with one infinite cache shared by
//! the whole fleet, the fraction of prompt blocks (partial last blocks included) that some
//! earlier request already computed. For the Mooncake conversation trace at its own 512-token
//! granularity this is the trace's published figure, 0.3664. An engine can come close but not
//! reach it: engines cache full blocks only, and recompute the last block of a prompt that is
//! a whole number of blocks (it needs that token's logits).

use std::io::BufRead;
use std::path::Path;

use kvmesh_core::{SequenceHash, SequenceHashMap};
use serde::Serialize;

use crate::trace::{
    AzureReader, AzureRecord, MooncakeReader, MooncakeRecord, TraceError, TraceErrorKind,
};

mod content;

pub use content::{BlockMapper, PromptBlocks, Segment};

/// Seed of the content hashes of every workload (fixed: hashes only need to agree within one).
pub const CONTENT_SEED: u64 = 0x6b76_6d65_7368_5349;

/// One request of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Arrival time in nanoseconds from the start of the workload.
    pub arrival_ns: u64,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Tokens to generate (an engine produces at least one).
    pub output_tokens: u32,
    /// A session (conversation) id, when the source knows one; routers may keep a session on
    /// one worker.
    pub session: Option<u64>,
    /// Sequence hashes of the prompt's full blocks.
    pub hashes: Vec<SequenceHash>,
    /// Identity of the partial last block (for the ideal hit ratio only; engines cache full
    /// blocks only).
    pub tail: Option<SequenceHash>,
}

impl Request {
    /// Prompt blocks, the partial last one included: `ceil(prompt_tokens / block_size)`.
    pub fn prompt_blocks(&self) -> usize {
        self.hashes.len() + usize::from(self.tail.is_some())
    }
}

/// An error turning records into a workload (not about a particular file line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadError {
    /// A block size of zero.
    #[error("block size must be at least 1 token")]
    ZeroBlockSize,
    /// A Mooncake record whose ids do not cover its prompt.
    #[error(
        "{ids} hash ids for {input_length} input tokens; expected ceil({input_length} / \
         {trace_block_tokens}) = {expected}"
    )]
    IdsMismatch {
        /// Ids in the record.
        ids: usize,
        /// Its input length.
        input_length: u64,
        /// Tokens per id.
        trace_block_tokens: u32,
        /// Ids needed.
        expected: u64,
    },
    /// A length beyond what the simulator represents (`u32` tokens).
    #[error("{field} of {value} tokens is too long (at most {max})")]
    TooLong {
        /// Which length.
        field: &'static str,
        /// The value.
        value: u64,
        /// The limit.
        max: u64,
    },
}

/// Requests sorted by arrival, hashed at one block size.
#[derive(Debug, Clone)]
pub struct Workload {
    name: String,
    block_size: u32,
    requests: Vec<Request>,
}

/// Builds a workload one request at a time.
#[derive(Debug, Clone)]
pub struct WorkloadBuilder {
    mapper: BlockMapper,
    requests: Vec<Request>,
    segments: Vec<Segment>,
    next_unique: u64,
}

fn to_u32(field: &'static str, value: u64) -> Result<u32, WorkloadError> {
    u32::try_from(value).map_err(|_| WorkloadError::TooLong {
        field,
        value,
        max: u64::from(u32::MAX),
    })
}

impl WorkloadBuilder {
    /// A builder hashing at `block_size` tokens per block.
    pub fn new(block_size: u32) -> Result<Self, WorkloadError> {
        if block_size == 0 {
            return Err(WorkloadError::ZeroBlockSize);
        }
        Ok(WorkloadBuilder {
            mapper: BlockMapper::new(block_size, CONTENT_SEED),
            requests: Vec::new(),
            segments: Vec::new(),
            // Ids for unique content count down from the top, away from trace ids.
            next_unique: u64::MAX,
        })
    }

    /// Requests added so far.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether none was added.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Adds a request whose prompt is `segments`.
    pub fn push(
        &mut self,
        arrival_ns: u64,
        segments: &[Segment],
        output_tokens: u64,
        session: Option<u64>,
    ) -> Result<(), WorkloadError> {
        let prompt: u64 = segments.iter().map(|s| u64::from(s.tokens)).sum();
        let prompt_tokens = to_u32("prompt", prompt)?;
        let output_tokens = to_u32("output", output_tokens)?;
        let PromptBlocks { hashes, tail } = self.mapper.map(segments);
        self.requests.push(Request {
            arrival_ns,
            prompt_tokens,
            output_tokens,
            session,
            hashes,
            tail,
        });
        Ok(())
    }

    /// Adds a Mooncake record whose ids name `trace_block_tokens`-token blocks (512 in
    /// Mooncake's own traces).
    pub fn push_mooncake(
        &mut self,
        record: &MooncakeRecord,
        trace_block_tokens: u32,
    ) -> Result<(), WorkloadError> {
        let g = u64::from(trace_block_tokens.max(1));
        let expected = record.input_length.div_ceil(g);
        if record.hash_ids.len() as u64 != expected {
            return Err(WorkloadError::IdsMismatch {
                ids: record.hash_ids.len(),
                input_length: record.input_length,
                trace_block_tokens,
                expected,
            });
        }
        to_u32("prompt", record.input_length)?;
        let mut left = record.input_length;
        self.segments.clear();
        for &id in &record.hash_ids {
            let tokens = left.min(g);
            left -= tokens;
            self.segments.push(Segment {
                id,
                tokens: tokens as u32,
            });
        }
        let segments = std::mem::take(&mut self.segments);
        let result = self.push(
            record.timestamp_ms.saturating_mul(1_000_000),
            &segments,
            record.output_length,
            None,
        );
        self.segments = segments;
        result
    }

    /// Adds a request with unique content (no prefix shared with any other).
    pub fn push_unique(
        &mut self,
        arrival_ns: u64,
        prompt_tokens: u64,
        output_tokens: u64,
    ) -> Result<(), WorkloadError> {
        let tokens = to_u32("prompt", prompt_tokens)?;
        let id = self.next_unique;
        self.next_unique -= 1;
        let segment = [Segment { id, tokens }];
        self.push(
            arrival_ns,
            &segment[..usize::from(tokens > 0)],
            output_tokens,
            None,
        )
    }

    /// The workload, sorted by arrival (stable: equal times keep their order).
    pub fn build(self, name: impl Into<String>) -> Workload {
        let mut requests = self.requests;
        requests.sort_by_key(|r| r.arrival_ns);
        Workload {
            name: name.into(),
            block_size: self.mapper.block_size(),
            requests,
        }
    }
}

/// Hits of an ideal cache over a workload; see [`Workload::ideal`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct IdealCache {
    /// Prompt blocks, partial last blocks included.
    pub prompt_blocks: u64,
    /// Of those, blocks an earlier request computed.
    pub hit_blocks: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Of those, tokens in hit blocks.
    pub hit_tokens: u64,
    /// Distinct full blocks: what an infinite cache would hold.
    pub distinct_blocks: u64,
}

impl IdealCache {
    /// `hit_blocks / prompt_blocks` (0 for no blocks).
    pub fn block_hit_ratio(&self) -> f64 {
        ratio(self.hit_blocks, self.prompt_blocks)
    }

    /// `hit_tokens / prompt_tokens` (0 for no tokens).
    pub fn token_hit_ratio(&self) -> f64 {
        ratio(self.hit_tokens, self.prompt_tokens)
    }
}

pub(crate) fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl Workload {
    /// Reads a Mooncake-format trace whose ids name `trace_block_tokens`-token blocks, hashing
    /// at `block_size`; at most `limit` requests (the first in file order). A record that
    /// parses but does not describe a request is an error naming its line.
    pub fn load_mooncake(
        path: impl AsRef<Path>,
        trace_block_tokens: u32,
        block_size: u32,
        limit: Option<usize>,
    ) -> Result<Workload, TraceError> {
        let path = path.as_ref();
        Self::read_mooncake(
            crate::trace::open(path)?,
            path,
            trace_block_tokens,
            block_size,
            limit,
        )
    }

    /// [`load_mooncake`](Self::load_mooncake) from any reader, named `source` in errors.
    pub fn read_mooncake<R: BufRead>(
        reader: R,
        source: &Path,
        trace_block_tokens: u32,
        block_size: u32,
        limit: Option<usize>,
    ) -> Result<Workload, TraceError> {
        let mut b = builder_for(source, block_size)?;
        let mut reader = MooncakeReader::new(reader, source);
        while limit.is_none_or(|n| b.len() < n) {
            let Some(record) = reader.next() else { break };
            b.push_mooncake(&record?, trace_block_tokens)
                .map_err(|e| invalid_request(source, reader.line(), &e))?;
        }
        Ok(b.build(source.display().to_string()))
    }

    /// Reads an Azure CSV trace (arrivals and lengths; every prompt unique), hashing at
    /// `block_size`; at most `limit` requests.
    pub fn load_azure(
        path: impl AsRef<Path>,
        block_size: u32,
        limit: Option<usize>,
    ) -> Result<Workload, TraceError> {
        let path = path.as_ref();
        let mut b = builder_for(path, block_size)?;
        let mut reader = AzureReader::new(crate::trace::open(path)?, path);
        let mut first = None;
        while limit.is_none_or(|n| b.len() < n) {
            let Some(record) = reader.next() else { break };
            let r = record?;
            let t0 = *first.get_or_insert(r.timestamp_us);
            b.push_unique(
                r.timestamp_us.saturating_sub(t0).saturating_mul(1_000),
                r.context_tokens,
                r.generated_tokens,
            )
            .map_err(|e| invalid_request(path, reader.line(), &e))?;
        }
        Ok(b.build(path.display().to_string()))
    }

    /// A workload from Mooncake records already in memory.
    pub fn from_mooncake(
        records: &[MooncakeRecord],
        trace_block_tokens: u32,
        block_size: u32,
        name: impl Into<String>,
    ) -> Result<Workload, WorkloadError> {
        let mut b = WorkloadBuilder::new(block_size)?;
        for r in records {
            b.push_mooncake(r, trace_block_tokens)?;
        }
        Ok(b.build(name))
    }

    /// A workload from Azure records already in memory: arrivals relative to the earliest.
    pub fn from_azure(
        records: &[AzureRecord],
        block_size: u32,
        name: impl Into<String>,
    ) -> Result<Workload, WorkloadError> {
        let mut b = WorkloadBuilder::new(block_size)?;
        let t0 = records.iter().map(|r| r.timestamp_us).min().unwrap_or(0);
        for r in records {
            b.push_unique(
                (r.timestamp_us - t0).saturating_mul(1_000),
                r.context_tokens,
                r.generated_tokens,
            )?;
        }
        Ok(b.build(name))
    }

    /// Where the workload came from (a path or a generator's description).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tokens per block of every request's hashes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The requests, by arrival.
    pub fn requests(&self) -> &[Request] {
        &self.requests
    }

    /// Number of requests.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether there are no requests.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Keeps the first `n` requests.
    pub fn truncate(&mut self, n: usize) {
        self.requests.truncate(n);
    }

    /// Divides every arrival time by `factor` (> 1 compresses the trace: more load).
    ///
    /// # Panics
    /// If `factor` is not finite and positive.
    pub fn speed_up(&mut self, factor: f64) {
        assert!(
            factor.is_finite() && factor > 0.0,
            "speed-up must be finite and positive"
        );
        for r in &mut self.requests {
            r.arrival_ns = (r.arrival_ns as f64 / factor).round() as u64;
        }
    }

    /// Time from the first arrival to the last, in nanoseconds.
    pub fn duration_ns(&self) -> u64 {
        match (self.requests.first(), self.requests.last()) {
            (Some(a), Some(b)) => b.arrival_ns - a.arrival_ns,
            _ => 0,
        }
    }

    /// The hits of one infinite cache shared by every worker, in arrival order: a prompt
    /// block (the partial last one included, by its tail identity) hits when an earlier
    /// request had it. This is the upper bound any routing and eviction can approach.
    pub fn ideal(&self) -> IdealCache {
        let mut seen: SequenceHashMap<()> = SequenceHashMap::default();
        let mut ideal = IdealCache::default();
        let bs = u64::from(self.block_size);
        for r in &self.requests {
            ideal.prompt_blocks += r.prompt_blocks() as u64;
            ideal.prompt_tokens += u64::from(r.prompt_tokens);
            // Hashes name whole prefixes, so the hits form a leading run.
            let hits = r.hashes.iter().take_while(|h| seen.contains_key(h)).count();
            ideal.hit_blocks += hits as u64;
            ideal.hit_tokens += hits as u64 * bs;
            if hits == r.hashes.len() {
                if let Some(tail) = r.tail {
                    if seen.contains_key(&tail) {
                        ideal.hit_blocks += 1;
                        ideal.hit_tokens += u64::from(r.prompt_tokens) % bs;
                    }
                    seen.insert(tail, ());
                }
            } else if let Some(tail) = r.tail {
                seen.insert(tail, ());
            }
            for &h in &r.hashes[hits..] {
                seen.insert(h, ());
                ideal.distinct_blocks += 1;
            }
        }
        ideal
    }

    /// The longest request, prompt plus output, in blocks.
    pub fn max_request_blocks(&self) -> usize {
        let bs = u64::from(self.block_size);
        self.requests
            .iter()
            .map(|r| (u64::from(r.prompt_tokens) + u64::from(r.output_tokens.max(1))).div_ceil(bs))
            .max()
            .unwrap_or(0) as usize
    }
}

fn builder_for(path: &Path, block_size: u32) -> Result<WorkloadBuilder, TraceError> {
    WorkloadBuilder::new(block_size).map_err(|e| {
        TraceError::new(
            path,
            None,
            TraceErrorKind::InvalidRequest {
                message: e.to_string(),
            },
        )
    })
}

fn invalid_request(path: &Path, line: u64, e: &WorkloadError) -> TraceError {
    TraceError::new(
        path,
        Some(line),
        TraceErrorKind::InvalidRequest {
            message: e.to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::shared_data;

    fn record(ts: u64, input: u64, ids: &[u64]) -> MooncakeRecord {
        MooncakeRecord {
            timestamp_ms: ts,
            input_length: input,
            output_length: 10,
            hash_ids: ids.to_vec(),
        }
    }

    #[test]
    fn ideal_counts_repeats_in_arrival_order() {
        let records = [
            record(5, 1100, &[1, 2, 3]),
            record(0, 1024, &[1, 2]),
            record(9, 1100, &[1, 2, 3]),
            record(12, 700, &[1, 9]),
        ];
        let w = Workload::from_mooncake(&records, 512, 512, "t").unwrap();
        assert_eq!(w.requests()[0].arrival_ns, 0);
        let ideal = w.ideal();
        // Blocks: 2 + 3 + 3 + 2 = 10. Hits: 0, then [1,2] (2), then [1,2,3-tail] (3), then [1] (1).
        assert_eq!((ideal.prompt_blocks, ideal.hit_blocks), (10, 6));
        assert_eq!(ideal.hit_tokens, 1024 + 1100 + 512);
        assert_eq!(ideal.distinct_blocks, 2);
        assert_eq!(w.duration_ns(), 12_000_000);
    }

    #[test]
    fn mismatched_ids_and_bad_lines_name_the_line() {
        let text = "{\"timestamp\": 0, \"input_length\": 1024, \"output_length\": 1, \"hash_ids\": [1, 2]}\n\
                    \n\
                    {\"timestamp\": 1, \"input_length\": 1025, \"output_length\": 1, \"hash_ids\": [1, 2]}\n";
        let err = Workload::read_mooncake(text.as_bytes(), Path::new("m.jsonl"), 512, 16, None)
            .unwrap_err();
        assert_eq!(err.line(), Some(3));
        assert!(
            err.to_string()
                .starts_with("m.jsonl:3: invalid request: 2 hash ids for 1025 input tokens"),
            "{err}"
        );
        let w = Workload::read_mooncake(text.as_bytes(), Path::new("m"), 512, 16, Some(1)).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w.requests()[0].hashes.len(), 64);
    }

    #[test]
    fn unique_content_shares_nothing() {
        let records: Vec<AzureRecord> = (0..3)
            .map(|i| AzureRecord {
                timestamp_us: 1_000_000 + i * 10,
                context_tokens: 100,
                generated_tokens: 5,
            })
            .collect();
        let w = Workload::from_azure(&records, 16, "a").unwrap();
        assert_eq!(w.ideal().hit_blocks, 0);
        assert_eq!(w.requests()[2].arrival_ns, 20_000);
        assert_eq!(w.requests()[0].hashes.len(), 6);
    }

    #[test]
    fn speed_up_divides_arrivals() {
        let records = [record(0, 10, &[1]), record(1000, 10, &[2])];
        let mut w = Workload::from_mooncake(&records, 512, 16, "t").unwrap();
        w.speed_up(4.0);
        assert_eq!(w.requests()[1].arrival_ns, 250_000_000);
    }

    /// The must-check figure: the published ideal of the Mooncake conversation trace.
    #[test]
    fn mooncake_conversation_ideal_is_0_3664() {
        let Some(path) = shared_data("mooncake/conversation_trace.jsonl") else {
            eprintln!("skipping: mooncake/conversation_trace.jsonl not found under shared/data");
            return;
        };
        let w = Workload::load_mooncake(&path, 512, 512, None).unwrap();
        assert_eq!(w.len(), 12_031);
        let ideal = w.ideal();
        assert_eq!(ideal.prompt_blocks, 288_500);
        // 182,790 unique ids, of which 170,899 name full blocks.
        assert_eq!(ideal.distinct_blocks, 170_899);
        assert!(
            (ideal.block_hit_ratio() - 0.3664).abs() < 5e-5,
            "{}",
            ideal.block_hit_ratio()
        );
        assert!(
            (ideal.token_hit_ratio() - 0.3736).abs() < 5e-5,
            "{}",
            ideal.token_hit_ratio()
        );
        // Finer blocks can only find more reuse.
        let fine = Workload::load_mooncake(&path, 512, 64, None)
            .unwrap()
            .ideal();
        assert!(fine.token_hit_ratio() >= ideal.token_hit_ratio() - 1e-9);
    }

    #[test]
    fn shared_prefix_trace_ideal_is_0_75() {
        let Some(path) = shared_data("shared_prefix/gsp_default_bs512.jsonl") else {
            eprintln!("skipping: shared_prefix/gsp_default_bs512.jsonl not found");
            return;
        };
        let w = Workload::load_mooncake(&path, 512, 512, None).unwrap();
        assert!((w.ideal().block_hit_ratio() - 0.75).abs() < 1e-3);
    }
}
