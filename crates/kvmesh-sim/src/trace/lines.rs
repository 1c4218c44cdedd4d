//! Bounded line reading shared by the trace readers.
//!
//! `BufRead::read_until` on its own grows its buffer until it finds a newline, so a file with no
//! newline (or a corrupt one) would be read whole into memory. [`LineReader`] reads through
//! `take(limit + 2)` (the content plus a `\r\n`): a line whose content is over the limit is
//! detected after at most `limit + 2` bytes and reported with its number, and nothing past
//! those bytes is consumed.

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
        // Room for the content and a `\r\n` terminator: the limit is on the line's content.
        let limit = self.max_line_bytes.saturating_add(2) as u64;
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buf);
        match read {
            Err(e) => Err(self.error(TraceErrorKind::Io(e))),
            Ok(0) => {
                // The end: no line was read, so the count stays at the last one.
                self.line -= 1;
                self.done = true;
                Ok(None)
            }
            Ok(_) => {
                if self.buf.last() == Some(&b'\n') {
                    self.buf.pop();
                    if self.buf.last() == Some(&b'\r') {
                        self.buf.pop();
                    }
                }
                if self.buf.len() > self.max_line_bytes {
                    let limit = self.max_line_bytes;
                    return Err(self.error(TraceErrorKind::LineTooLong { limit }));
                }
                Ok(Some(&self.buf))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(text: &str, limit: usize) -> LineReader<&[u8]> {
        let mut r = LineReader::new(text.as_bytes(), PathBuf::from("t"));
        r.set_max_line_bytes(limit);
        r
    }

    #[test]
    fn the_line_number_stays_on_the_last_line_at_the_end() {
        let mut r = reader("a\nb\n", 10);
        assert_eq!(r.line(), 0);
        assert_eq!(r.next_line().unwrap(), Some(&b"a"[..]));
        assert_eq!(r.next_line().unwrap(), Some(&b"b"[..]));
        assert_eq!(r.line(), 2);
        assert_eq!(r.next_line().unwrap(), None);
        assert_eq!(r.line(), 2);
        let mut unterminated = reader("a\nb", 10);
        unterminated.next_line().unwrap();
        assert_eq!(unterminated.next_line().unwrap(), Some(&b"b"[..]));
        assert_eq!(unterminated.next_line().unwrap(), None);
        assert_eq!(unterminated.line(), 2);
    }

    #[test]
    fn the_limit_is_on_content_whatever_the_terminator() {
        for text in ["abcd\nx", "abcd\r\nx", "abcd"] {
            let mut r = reader(text, 4);
            assert_eq!(r.next_line().unwrap(), Some(&b"abcd"[..]), "{text:?}");
        }
        for text in ["abcde\n", "abcde\r\n", "abcde", "abcdefghij"] {
            let err = reader(text, 4).next_line().unwrap_err();
            assert!(
                matches!(err.kind(), TraceErrorKind::LineTooLong { limit: 4 }),
                "{text:?}: {err}"
            );
        }
    }
}
