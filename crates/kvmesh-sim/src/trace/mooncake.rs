//! The Mooncake JSON-lines trace format.
//!
//! Mooncake's published traces (`conversation_trace.jsonl` and friends, from the Mooncake paper's
//! artefact repository) hold one request per line:
//!
//! ```json
//! {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2, 3]}
//! ```
//!
//! * `timestamp`: arrival time in milliseconds from the start of the trace ([`MooncakeRecord::timestamp_ms`]).
//! * `input_length`, `output_length`: prompt and generated tokens.
//! * `hash_ids`: one id per **512-token block** of the prompt ([`MOONCAKE_BLOCK_TOKENS`]), the
//!   last one possibly partial, so `hash_ids.len() == ceil(input_length / 512)`. Equal ids mean
//!   equal prefixes up to and including that block, which is what prefix caching can reuse; the
//!   ids are the trace's own and unrelated to kvmesh's sequence hashes. Traces written in
//!   this format by other tools may use another block size (the team's `shared_prefix` traces
//!   use 16 or 512); [`crate::Workload::from_mooncake`] takes it as a parameter.
//!
//! Fields beyond these four are ignored; the four are required. Blank lines are skipped.
//! Nothing else is checked here (timestamps need not be sorted, `hash_ids` need not match
//! `input_length`): the simulator decides what it needs.
//!
//! Reading is streamed and bounded; errors name the file and line (see [the module
//! above](super)).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lines::LineReader;
use super::{open, TraceError, TraceErrorKind};

/// Tokens per Mooncake hash id: each id in `hash_ids` names one 512-token block of the prompt.
pub const MOONCAKE_BLOCK_TOKENS: u32 = 512;

/// One request of a Mooncake trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MooncakeRecord {
    /// Arrival time in milliseconds since the start of the trace (`timestamp` in the file).
    #[serde(rename = "timestamp")]
    pub timestamp_ms: u64,
    /// Prompt tokens.
    pub input_length: u64,
    /// Generated tokens.
    pub output_length: u64,
    /// One id per 512-token prompt block ([`MOONCAKE_BLOCK_TOKENS`]); shared ids are shared prefixes.
    pub hash_ids: Vec<u64>,
}

impl MooncakeRecord {
    /// Input plus output tokens: the KV footprint of the request when it finishes (saturating).
    pub fn total_length(&self) -> u64 {
        self.input_length.saturating_add(self.output_length)
    }
}

/// Streams [`MooncakeRecord`]s from a reader, one bounded line at a time.
///
/// ```
/// use kvmesh_sim::MooncakeReader;
/// let text = "{\"timestamp\": 5, \"input_length\": 600, \"output_length\": 7, \"hash_ids\": [0, 1]}\n\n";
/// let records: Vec<_> = MooncakeReader::new(text.as_bytes(), "inline")
///     .collect::<Result<_, _>>()?;
/// assert_eq!(records.len(), 1);
/// assert_eq!(records[0].total_length(), 607);
/// # Ok::<(), kvmesh_sim::TraceError>(())
/// ```
#[derive(Debug)]
pub struct MooncakeReader<R> {
    lines: LineReader<R>,
}

impl<R: BufRead> MooncakeReader<R> {
    /// A reader over `reader`, naming it `source` (usually its path) in errors.
    pub fn new(reader: R, source: impl Into<PathBuf>) -> Self {
        MooncakeReader {
            lines: LineReader::new(reader, source.into()),
        }
    }

    /// Sets the longest line accepted, in bytes without the newline (default
    /// [`MAX_LINE_BYTES`](super::MAX_LINE_BYTES)).
    pub fn max_line_bytes(mut self, limit: usize) -> Self {
        self.lines.set_max_line_bytes(limit);
        self
    }

    /// The 1-based number of the last line read (0 before the first).
    pub fn line(&self) -> u64 {
        self.lines.line()
    }
}

impl<R: BufRead> Iterator for MooncakeReader<R> {
    type Item = Result<MooncakeRecord, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = match self.lines.next_line() {
                Err(e) => return Some(Err(e)),
                Ok(None) => return None,
                Ok(Some(line)) => line,
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(match serde_json::from_slice(line) {
                Ok(record) => Ok(record),
                Err(e) => {
                    let kind = TraceErrorKind::InvalidRecord {
                        column: e.column(),
                        message: message_without_position(&e),
                    };
                    Err(self.lines.error(kind))
                }
            });
        }
    }
}

/// serde_json appends " at line L column C", which is wrong once a line is parsed on its own.
fn message_without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(message) => message.to_string(),
        None => text,
    }
}

/// Reads every record from `reader`, naming it `source` in errors.
pub fn read_mooncake<R: BufRead>(
    reader: R,
    source: impl Into<PathBuf>,
) -> Result<Vec<MooncakeRecord>, TraceError> {
    MooncakeReader::new(reader, source).collect()
}

/// Reads every record of the Mooncake trace at `path`.
pub fn read_mooncake_file(path: impl AsRef<Path>) -> Result<Vec<MooncakeRecord>, TraceError> {
    let path = path.as_ref();
    read_mooncake(open(path)?, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_line(ts: u64, input: u64, output: u64) -> String {
        let blocks = input.div_ceil(u64::from(MOONCAKE_BLOCK_TOKENS));
        let ids: Vec<String> = (0..blocks).map(|i| i.to_string()).collect();
        format!(
            "{{\"timestamp\": {ts}, \"input_length\": {input}, \"output_length\": {output}, \"hash_ids\": [{}]}}",
            ids.join(", ")
        )
    }

    #[test]
    fn reads_records_and_skips_blank_lines() {
        let text = format!(
            "{}\n\n   \r\n{}\r\n{}",
            record_line(0, 1024, 10),
            record_line(17, 513, 0),
            record_line(20, 1, 1)
        );
        let records = read_mooncake(text.as_bytes(), "t.jsonl").unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[1],
            MooncakeRecord {
                timestamp_ms: 17,
                input_length: 513,
                output_length: 0,
                hash_ids: vec![0, 1]
            }
        );
        assert_eq!(records[2].total_length(), 2);
        assert!(read_mooncake(&b""[..], "empty").unwrap().is_empty());
    }

    #[test]
    fn extra_fields_are_ignored_but_the_four_are_required() {
        let ok =
            r#"{"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": [], "x": 1}"#;
        assert_eq!(read_mooncake(ok.as_bytes(), "t").unwrap().len(), 1);
        let missing = r#"{"timestamp": 1, "input_length": 2, "output_length": 3}"#;
        let err = read_mooncake(missing.as_bytes(), "t").unwrap_err();
        assert!(err.to_string().contains("hash_ids"), "{err}");
    }

    #[test]
    fn malformed_line_names_path_and_line() {
        let text = format!(
            "{}\n\n{{\"timestamp\": 1, \"input_length\": -4}}\n{}\n",
            record_line(0, 10, 1),
            record_line(1, 10, 1)
        );
        let err = read_mooncake(text.as_bytes(), "dir/trace.jsonl").unwrap_err();
        assert_eq!(err.line(), Some(3));
        assert_eq!(err.path(), Path::new("dir/trace.jsonl"));
        let shown = err.to_string();
        assert!(
            shown.starts_with("dir/trace.jsonl:3: invalid record at column"),
            "{shown}"
        );
        assert!(!shown.contains("at line 1"), "{shown}");

        let err = read_mooncake(&b"{\"timestamp\": 1,\n"[..], "t").unwrap_err();
        assert!(
            matches!(err.kind(), TraceErrorKind::InvalidRecord { .. }),
            "{err}"
        );
        let err = read_mooncake(&b"\xff\xfe\n"[..], "t").unwrap_err();
        assert_eq!(err.line(), Some(1), "{err}");
    }

    #[test]
    fn stops_after_the_first_error() {
        let text = format!("nope\n{}\n", record_line(0, 1, 1));
        let mut reader = MooncakeReader::new(text.as_bytes(), "t");
        assert!(reader.next().unwrap().is_err());
        assert!(reader.next().is_none());
    }

    #[test]
    fn long_lines_are_refused_without_reading_them_whole() {
        let line = record_line(0, 512 * 20, 1);
        let limit = line.len();
        // Exactly at the limit: fine, with or without a newline.
        for text in [format!("{line}\n"), line.clone()] {
            let n = MooncakeReader::new(text.as_bytes(), "t")
                .max_line_bytes(limit)
                .count();
            assert_eq!(n, 1);
        }
        // One byte over, on line 2: an error naming line 2, and the reader stops early.
        let long = format!("{line}\n {line}\n{line}\n");
        let mut source = long.as_bytes();
        let err = MooncakeReader::new(&mut source, "big.jsonl")
            .max_line_bytes(limit)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_err();
        assert_eq!(err.line(), Some(2));
        assert!(matches!(err.kind(), TraceErrorKind::LineTooLong { limit: l } if *l == limit));
        assert!(
            err.to_string().starts_with("big.jsonl:2: line longer than"),
            "{err}"
        );
        // Line 1 whole (limit + 1 bytes); of line 2 at most limit + 2 (room for "\r\n").
        assert_eq!(
            source.len(),
            long.len() - (limit + 1) - (limit + 2),
            "read past line 2"
        );
    }

    #[test]
    fn missing_file_is_named() {
        let path = std::env::temp_dir().join("kvmesh-sim-no-such-trace.jsonl");
        let err = read_mooncake_file(&path).unwrap_err();
        assert_eq!(err.line(), None);
        assert!(matches!(err.kind(), TraceErrorKind::Io(_)));
        assert!(
            err.to_string().starts_with(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn real_mooncake_conversation_trace() {
        let Some(path) = crate::trace::shared_data("mooncake/conversation_trace.jsonl") else {
            eprintln!("skipping: mooncake/conversation_trace.jsonl not found under shared/data");
            return;
        };
        let records = read_mooncake_file(&path).unwrap();
        assert_eq!(records.len(), 12_031);
        let mean_input =
            records.iter().map(|r| r.input_length as f64).sum::<f64>() / records.len() as f64;
        assert!(
            (mean_input - 12_035.0).abs() < 1.0,
            "mean input {mean_input}"
        );
        let block = u64::from(MOONCAKE_BLOCK_TOKENS);
        assert!(records
            .iter()
            .all(|r| r.hash_ids.len() as u64 == r.input_length.div_ceil(block)));
        assert!(records
            .windows(2)
            .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
    }
}
