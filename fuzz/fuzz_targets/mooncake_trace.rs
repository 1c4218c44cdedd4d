//! Fuzzes the Mooncake trace loader: `MooncakeReader` (streaming, with a line cap) and
//! `read_mooncake` (whole source, default cap).
//!
//! Input layout: `[cap, flags, fail_lo, fail_hi, body...]`
//! * `cap`: the reader's `max_line_bytes`, 0..=255 (small, so the limit is hit often);
//! * `flags`: low 4 bits + 1 = the size of the chunks the source hands out (exercises lines split
//!   across `fill_buf` calls); bit 7 set: the source fails with an IO error once it reaches byte
//!   `fail` (little-endian `fail_lo`, `fail_hi`) of the body.
//!
//! The reader must agree exactly with an independent model of the documented format: lines end
//! at `\n` (a `\r` before it is dropped), a line of more than `cap` bytes once its `\n` (or
//! `\r\n`) is dropped is `LineTooLong` (found after reading at most `cap + 2` of its bytes),
//! blank (ASCII whitespace)
//! lines are skipped, every other line is one JSON record with the four required fields, and the
//! first error ends the stream. So: the records are those of the valid non-blank lines, in order,
//! each with the right fields; there is at most one error, last, carrying the source's name and
//! the 1-based number of the line at fault, displayed as `source:LINE: message`; nothing is
//! yielded after it, and `line()` names the line of each record and of the error.

#![no_main]

use std::io::{self, BufRead, Read};
use std::path::Path;

use kvmesh_sim::{read_mooncake, MooncakeReader, MooncakeRecord, TraceErrorKind, MAX_LINE_BYTES};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SOURCE: &str = "fuzz.jsonl";

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let cap = usize::from(data[0]);
    let chunk = usize::from(data[1] & 0x0f) + 1;
    let fail_at =
        (data[1] & 0x80 != 0).then(|| usize::from(u16::from_le_bytes([data[2], data[3]])));
    let body = &data[4..];

    // The streaming reader, small cap, chunked source, maybe an IO error.
    let source = Chunked {
        data: body,
        pos: 0,
        chunk,
        fail_at,
    };
    let expected = model(body, cap, fail_at);
    check_stream(
        MooncakeReader::new(source, SOURCE).max_line_bytes(cap),
        &expected,
    );

    // The whole-source function, default cap: no line of a fuzz input reaches 16 MiB.
    let expected = model(body, MAX_LINE_BYTES, None);
    match (read_mooncake(body, SOURCE), &expected.error) {
        (Ok(records), None) => assert_eq!(records, expected.records()),
        (Err(err), Some((line, kind))) => {
            assert_eq!(err.line(), Some(*line), "{err}");
            assert_eq!(kind_name(err.kind()), *kind, "{err}");
        }
        (got, want) => panic!("read_mooncake gave {got:?}, model expected error {want:?}"),
    }
});

/// What the model expects: records with their line numbers, then maybe one error.
#[derive(Debug)]
struct Expected {
    records: Vec<(u64, MooncakeRecord)>,
    error: Option<(u64, &'static str)>,
}

impl Expected {
    fn records(&self) -> Vec<MooncakeRecord> {
        self.records.iter().map(|(_, r)| r.clone()).collect()
    }
}

fn check_stream<R: BufRead>(mut reader: MooncakeReader<R>, expected: &Expected) {
    assert_eq!(reader.line(), 0, "line() before the first read");
    let mut records = Vec::new();
    let mut error = None;
    while let Some(item) = reader.next() {
        assert!(error.is_none(), "an item after the error {error:?}");
        match item {
            Ok(record) => {
                let want_line = expected.records.get(records.len()).map(|(line, _)| *line);
                assert_eq!(
                    Some(reader.line()),
                    want_line,
                    "line() after record {record:?}"
                );
                records.push(record);
            }
            Err(err) => {
                let line = err.line().expect("every reader error names a line");
                assert!(line >= 1, "line {line} is not 1-based: {err}");
                assert_eq!(err.path(), Path::new(SOURCE));
                let prefix = format!("{SOURCE}:{line}: ");
                assert!(err.to_string().starts_with(&prefix), "{err}");
                if let TraceErrorKind::InvalidRecord { column, .. } = err.kind() {
                    assert!(*column >= 1, "column {column} is not 1-based: {err}");
                }
                error = Some((line, kind_name(err.kind())));
            }
        }
    }
    assert!(reader.next().is_none(), "the reader yields after its end");
    assert_eq!(records, expected.records(), "records differ from the model");
    assert_eq!(error, expected.error, "errors differ from the model");
    if let Some((line, _)) = error {
        assert_eq!(reader.line(), line, "line() after the error");
    }
}

fn kind_name(kind: &TraceErrorKind) -> &'static str {
    match kind {
        TraceErrorKind::Io(_) => "io",
        TraceErrorKind::LineTooLong { .. } => "too long",
        TraceErrorKind::InvalidRecord { .. } => "invalid",
        _ => "other",
    }
}

/// The documented format, line by line, written independently of the reader.
fn model(body: &[u8], cap: usize, fail_at: Option<usize>) -> Expected {
    let mut expected = Expected {
        records: Vec::new(),
        error: None,
    };
    // The reader takes at most the content limit plus a `\r\n`.
    let limit = cap.saturating_add(2);
    let mut start = 0;
    let mut line = 0u64;
    loop {
        line += 1;
        let rest = &body[start..];
        // The bytes the reader takes for this line, and why it stops there.
        let newline = rest.iter().position(|&b| b == b'\n');
        let (span, ended_by_newline, at_eof) = match newline {
            Some(i) if i < limit => (i + 1, true, false),
            _ if rest.len() >= limit => (limit, false, false),
            _ => (rest.len(), false, true),
        };
        // An IO error at byte `k` is seen if a byte at `k` is needed, which includes asking for
        // more at the end of a source whose last line has no newline.
        if let Some(k) = fail_at {
            if k >= start && (k < start + span || (at_eof && k == start + span)) {
                expected.error = Some((line, "io"));
                return expected;
            }
        }
        if span == 0 {
            return expected;
        }
        let mut text = &rest[..span];
        if ended_by_newline {
            text = &text[..text.len() - 1];
            if let Some(stripped) = text.strip_suffix(b"\r") {
                text = stripped;
            }
        }
        if text.len() > cap {
            expected.error = Some((line, "too long"));
            return expected;
        }
        start += span;
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match record_of(text) {
            Some(record) => expected.records.push((line, record)),
            None => {
                expected.error = Some((line, "invalid"));
                return expected;
            }
        }
    }
}

/// A line's record per the format, read through `serde_json::Value`: an object with the four
/// fields as unsigned 64-bit integers (`hash_ids` an array of them); other fields are ignored.
/// The derived deserializer also refuses a field given twice, which `Value` would not notice, so
/// that case is decided by trying both.
fn record_of(text: &[u8]) -> Option<MooncakeRecord> {
    let value: Value = serde_json::from_slice(text).ok()?;
    let obj = value.as_object()?;
    let record = MooncakeRecord {
        timestamp_ms: obj.get("timestamp")?.as_u64()?,
        input_length: obj.get("input_length")?.as_u64()?,
        output_length: obj.get("output_length")?.as_u64()?,
        hash_ids: obj
            .get("hash_ids")?
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect::<Option<_>>()?,
    };
    let strict: MooncakeRecord = serde_json::from_slice(text).ok()?;
    assert_eq!(strict, record, "field mapping");
    Some(record)
}

/// A source that hands out `chunk` bytes at a time and, if `fail_at` is set, fails with an IO
/// error whenever asked for data at that offset.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
    fail_at: Option<usize>,
}

impl BufRead for Chunked<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let mut end = (self.pos + self.chunk).min(self.data.len());
        if let Some(k) = self.fail_at {
            if self.pos == k {
                return Err(io::Error::other("injected failure"));
            }
            if k > self.pos {
                end = end.min(k);
            }
        }
        Ok(&self.data[self.pos..end])
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let buf = self.fill_buf()?;
            let n = buf.len().min(out.len());
            out[..n].copy_from_slice(&buf[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}
