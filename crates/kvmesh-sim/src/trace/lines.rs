//! Bounded line reading shared by the trace readers.
//!
//! `BufRead::read_until` on its own grows its buffer until it finds a newline, so a file with no
//! newline (or a corrupt one) would be read whole into memory. [`LineReader`] reads through
//! `take(limit + 1)`: a line over the limit is detected after `limit + 1` bytes and reported
//! with its number, and nothing past it is consumed.

use std::io::{BufRead, Read};
use std::path::PathBuf;

use super::{TraceError, TraceErrorKind, MAX_LINE_BYTES};

/// Lines of a source, at most `max_line_bytes` each, with their 1-based numbers.
#[derive(Debug)]
pub(crate) struct LineReader<R> {
    reader: R,
    path: PathBuf,
    line: u64,
    max_line_bytes: usize,
    buf: Vec<u8>,
    done: bool,
}

impl<R: BufRead> LineReader<R> {
    pub(crate) fn new(reader: R, source: PathBuf) -> Self {
        LineReader {
            reader,
            path: source,
            line: 0,
            max_line_bytes: MAX_LINE_BYTES,
            buf: Vec::new(),
            done: false,
        }
    }

    pub(crate) fn set_max_line_bytes(&mut self, limit: usize) {
        self.max_line_bytes = limit;
    }

    /// The 1-based number of the last line read (0 before the first).
    pub(crate) fn line(&self) -> u64 {
        self.line
    }

    /// An error about the current line; the reader stops.
    pub(crate) fn error(&mut self, kind: TraceErrorKind) -> TraceError {
        self.done = true;
        TraceError::new(&self.path, Some(self.line), kind)
    }

    /// The next line without its terminator (`\n` or `\r\n`); `None` at the end.
    pub(crate) fn next_line(&mut self) -> Result<Option<&[u8]>, TraceError> {
        if self.done {
            return Ok(None);
        }
        self.buf.clear();
        self.line += 1;
        let limit = self.max_line_bytes.saturating_add(1) as u64;
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf);
        match read {
            Err(e) => Err(self.error(TraceErrorKind::Io(e))),
            Ok(0) => {
                self.done = true;
                Ok(None)
            }
            Ok(_) => {
                if self.buf.last() == Some(&b'\n') {
                    self.buf.pop();
                    if self.buf.last() == Some(&b'\r') {
                        self.buf.pop();
                    }
                } else if self.buf.len() > self.max_line_bytes {
                    let limit = self.max_line_bytes;
                    return Err(self.error(TraceErrorKind::LineTooLong { limit }));
                }
                Ok(Some(&self.buf))
            }
        }
    }
}
