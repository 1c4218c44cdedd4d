//! Request traces: readers for the Mooncake JSON-lines and Azure CSV formats.
//!
//! Both readers stream records from any [`BufRead`](std::io::BufRead) one bounded line at a
//! time ([`MAX_LINE_BYTES`] by default), so a huge or corrupt file costs one line of memory and
//! an error, never an unbounded read. Every error is a [`TraceError`] naming the source and the
//! 1-based line at fault (`path:LINE: message`); after an error a reader yields nothing more.
//!
//! | format | what it holds | reader | use it for |
//! |---|---|---|---|
//! | Mooncake jsonl | arrival, input/output lengths, prefix block ids | [`MooncakeReader`] | prefix caching and routing: the ids say which prompts share prefixes |
//! | Azure csv | arrival, input/output lengths | [`AzureReader`] | arrival processes and length distributions; no prefix information |
//!
//! The readers only parse: turning records into simulator requests (block hashes at an engine
//! block size) is [`crate::Workload`]'s job.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

mod azure;
mod lines;
mod mooncake;

pub use azure::{read_azure, read_azure_file, AzureReader, AzureRecord};
pub use mooncake::{
    read_mooncake, read_mooncake_file, MooncakeReader, MooncakeRecord, MOONCAKE_BLOCK_TOKENS,
};

/// The default longest line a trace reader accepts, in bytes (16 MiB), not counting the newline.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// What went wrong reading a trace; see [`TraceError`] for where.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TraceErrorKind {
    /// The source could not be opened or read.
    #[error("cannot read: {0}")]
    Io(io::Error),
    /// A line is longer than the reader's limit.
    #[error("line longer than the limit of {limit} bytes")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A line is not a valid record.
    #[error("invalid record at column {column}: {message}")]
    InvalidRecord {
        /// 1-based column (byte) where parsing failed.
        column: usize,
        /// The parser's message, without its position.
        message: String,
    },
    /// A record that parses but cannot describe a request.
    #[error("invalid request: {message}")]
    InvalidRequest {
        /// What is wrong with it.
        message: String,
    },
    /// A CSV file's first line is not the expected header.
    #[error("expected a header naming the columns {expected}, found '{found}'")]
    BadHeader {
        /// The columns required.
        expected: &'static str,
        /// The line found (cut to 200 bytes).
        found: String,
    },
}

/// An error reading a trace, with the source's name and the line at fault.
///
/// Displays as `path:LINE: message`, or `path: message` when no line is at fault (the file could
/// not be opened).
#[derive(Debug)]
pub struct TraceError {
    path: PathBuf,
    line: Option<u64>,
    kind: TraceErrorKind,
}

impl TraceError {
    pub(crate) fn new(path: &Path, line: Option<u64>, kind: TraceErrorKind) -> Self {
        TraceError {
            path: path.to_path_buf(),
            line,
            kind,
        }
    }

    /// The file (or source name) being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The 1-based line at fault, if the error is about one line.
    pub fn line(&self) -> Option<u64> {
        self.line
    }

    /// What went wrong.
    pub fn kind(&self) -> &TraceErrorKind {
        &self.kind
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.kind),
            None => write!(f, "{}: {}", self.path.display(), self.kind),
        }
    }
}

impl std::error::Error for TraceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            TraceErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Opens `path` for a reader, naming it in the error.
pub(crate) fn open(path: &Path) -> Result<io::BufReader<std::fs::File>, TraceError> {
    std::fs::File::open(path)
        .map(io::BufReader::new)
        .map_err(|e| TraceError::new(path, None, TraceErrorKind::Io(e)))
}

/// The trace shipped in the team's shared data folder, when this checkout has one beside it
/// (`../shared/data` from the workspace root). For tests, which skip when it is absent.
#[cfg(test)]
pub(crate) fn shared_data(relative: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    ["shared/data", "../shared/data"]
        .iter()
        .map(|dir| root.join(dir).join(relative))
        .find(|p| p.is_file())
}
