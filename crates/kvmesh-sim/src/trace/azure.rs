//! The Azure LLM inference trace format (CSV).
//!
//! Microsoft's Azure LLM inference traces (2023: `AzureLLMInferenceTrace_code.csv` and
//! `_conv.csv`, published with the Splitwise paper) hold one request per row:
//!
//! ```text
//! TIMESTAMP,ContextTokens,GeneratedTokens
//! 2023-11-16 18:17:03.9799600,4808,10
//! ```
//!
//! * `TIMESTAMP`: arrival, `YYYY-MM-DD HH:MM:SS[.fraction]`, read as UTC with microsecond
//!   precision (digits past the sixth are dropped) ([`AzureRecord::timestamp_us`]).
//! * `ContextTokens`, `GeneratedTokens`: prompt and generated tokens.
//!
//! The first line must be a header naming the three columns (any order, any case; other columns
//! are ignored). Fields are plain: no quoting. The traces carry **no prefix information**, so
//! they serve arrival processes and length distributions; [`crate::Workload::from_azure`] gives
//! every prompt unique content. Blank lines are skipped; errors name the file, the line and the
//! column.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::lines::LineReader;
use super::{open, TraceError, TraceErrorKind};

const EXPECTED: &str = "TIMESTAMP, ContextTokens, GeneratedTokens";

/// One request of an Azure trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AzureRecord {
    /// Arrival time in microseconds since the Unix epoch (the file's clock, taken as UTC).
    pub timestamp_us: u64,
    /// Prompt tokens.
    pub context_tokens: u64,
    /// Generated tokens.
    pub generated_tokens: u64,
}

/// Column positions found in the header.
#[derive(Debug, Clone, Copy)]
struct Columns {
    timestamp: usize,
    context: usize,
    generated: usize,
    count: usize,
}

/// Streams [`AzureRecord`]s from a reader, one bounded line at a time.
///
/// ```
/// use kvmesh_sim::AzureReader;
/// let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n";
/// let records: Vec<_> = AzureReader::new(text.as_bytes(), "inline").collect::<Result<_, _>>()?;
/// assert_eq!(records[0].context_tokens, 374);
/// assert_eq!(records[0].timestamp_us % 1_000_000, 680_590);
/// # Ok::<(), kvmesh_sim::TraceError>(())
/// ```
#[derive(Debug)]
pub struct AzureReader<R> {
    lines: LineReader<R>,
    columns: Option<Columns>,
}

impl<R: BufRead> AzureReader<R> {
    /// A reader over `reader`, naming it `source` (usually its path) in errors.
    pub fn new(reader: R, source: impl Into<PathBuf>) -> Self {
        AzureReader {
            lines: LineReader::new(reader, source.into()),
            columns: None,
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

    fn header(line: &[u8]) -> Result<Columns, TraceErrorKind> {
        let text = String::from_utf8_lossy(line);
        let names: Vec<String> = text
            .trim_start_matches('\u{feff}')
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        let find = |name: &str| names.iter().position(|c| c == name);
        match (
            find("timestamp"),
            find("contexttokens"),
            find("generatedtokens"),
        ) {
            (Some(timestamp), Some(context), Some(generated)) => Ok(Columns {
                timestamp,
                context,
                generated,
                count: names.len(),
            }),
            _ => Err(TraceErrorKind::BadHeader {
                expected: EXPECTED,
                found: text.chars().take(200).collect(),
            }),
        }
    }
}

fn invalid(column: usize, message: String) -> TraceErrorKind {
    TraceErrorKind::InvalidRecord { column, message }
}

fn parse_record(line: &[u8], cols: Columns) -> Result<AzureRecord, TraceErrorKind> {
    let text = std::str::from_utf8(line)
        .map_err(|e| invalid(e.valid_up_to() + 1, "not UTF-8".to_string()))?;
    // (1-based byte column, field) for each field.
    let mut fields = Vec::with_capacity(cols.count);
    let mut start = 0;
    for part in text.split(',') {
        fields.push((start + 1, part.trim()));
        start += part.len() + 1;
    }
    if fields.len() < cols.count {
        return Err(invalid(
            text.len() + 1,
            format!("{} fields, the header has {}", fields.len(), cols.count),
        ));
    }
    let (ts_col, ts) = fields[cols.timestamp];
    let timestamp_us =
        parse_timestamp(ts).map_err(|m| invalid(ts_col, format!("TIMESTAMP '{ts}': {m}")))?;
    let count = |i: usize, name: &str| {
        let (col, f) = fields[i];
        f.parse::<u64>()
            .map_err(|_| invalid(col, format!("{name} '{f}' is not a token count")))
    };
    Ok(AzureRecord {
        timestamp_us,
        context_tokens: count(cols.context, "ContextTokens")?,
        generated_tokens: count(cols.generated, "GeneratedTokens")?,
    })
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` (or with `T`) to microseconds since the Unix epoch, UTC.
fn parse_timestamp(s: &str) -> Result<u64, &'static str> {
    const FORMAT: &str = "expected YYYY-MM-DD HH:MM:SS[.fraction]";
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') {
        return Err(FORMAT);
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(FORMAT);
    }
    let num = |r: std::ops::Range<usize>| -> Result<u64, &'static str> {
        let part = &b[r];
        if part.iter().all(u8::is_ascii_digit) {
            Ok(part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
        } else {
            Err(FORMAT)
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err("date or time out of range");
    }
    let mut micros = 0u64;
    match &b[19..] {
        [] => {}
        [b'.', digits @ ..] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            for i in 0..6 {
                micros = micros * 10 + digits.get(i).map_or(0, |d| u64::from(d - b'0'));
            }
        }
        _ => return Err(FORMAT),
    }
    let days = days_from_civil(year, month, day);
    Ok(((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the date (proleptic Gregorian), for years >= 1970; H. Hinnant's
/// `days_from_civil`.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl<R: BufRead> Iterator for AzureReader<R> {
    type Item = Result<AzureRecord, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let columns = self.columns;
            let line = match self.lines.next_line() {
                Err(e) => return Some(Err(e)),
                // An empty file (no header either) has no records; not an error.
                Ok(None) => return None,
                Ok(Some(line)) => line,
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed = match columns {
                None => Self::header(line).map(|c| {
                    self.columns = Some(c);
                    None
                }),
                Some(cols) => parse_record(line, cols).map(Some),
            };
            match parsed {
                Ok(None) => continue,
                Ok(Some(record)) => return Some(Ok(record)),
                Err(kind) => return Some(Err(self.lines.error(kind))),
            }
        }
    }
}

/// Reads every record from `reader`, naming it `source` in errors.
pub fn read_azure<R: BufRead>(
    reader: R,
    source: impl Into<PathBuf>,
) -> Result<Vec<AzureRecord>, TraceError> {
    AzureReader::new(reader, source).collect()
}

/// Reads every record of the Azure trace at `path`.
pub fn read_azure_file(path: impl AsRef<Path>) -> Result<Vec<AzureRecord>, TraceError> {
    let path = path.as_ref();
    read_azure(open(path)?, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_microseconds() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Ok(0));
        assert_eq!(parse_timestamp("1970-01-02 00:00:01.5"), Ok(86_401_500_000));
        // date -u -d '2023-11-16 18:17:03' +%s = 1700158623
        assert_eq!(
            parse_timestamp("2023-11-16 18:17:03.9799600"),
            Ok(1_700_158_623_979_960)
        );
        assert_eq!(
            parse_timestamp("2024-02-29T00:00:00"),
            Ok(1_709_164_800_000_000)
        );
        for bad in [
            "2023-11-16",
            "2023-13-01 00:00:00",
            "2023-02-29 00:00:00",
            "2023-11-16 24:00:00",
            "2023-11-16 18:17:03.",
            "2023-11-16 18:17:03.12x",
            "20x3-11-16 18:17:03",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_rows_in_any_column_order() {
        let text = "\u{feff}GeneratedTokens, timestamp ,ContextTokens,Extra\n\
                    10,2023-11-16 18:17:03.9799600,4808,x\n\n\
                    8,2023-11-16 18:17:04.0319600,3180,y\r\n";
        let records = read_azure(text.as_bytes(), "t.csv").unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].context_tokens, 4808);
        assert_eq!(records[0].generated_tokens, 10);
        assert_eq!(records[1].timestamp_us - records[0].timestamp_us, 52_000);
        assert!(read_azure(&b""[..], "empty.csv").unwrap().is_empty());
    }

    #[test]
    fn errors_name_path_line_and_column() {
        let err = read_azure(&b"time,ctx,gen\n"[..], "a.csv").unwrap_err();
        assert_eq!(err.line(), Some(1));
        assert!(
            matches!(err.kind(), TraceErrorKind::BadHeader { .. }),
            "{err}"
        );

        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:17:03.97,4808,10\n\
                    2023-11-16 18:17:04.03,-3,8\n";
        let err = read_azure(text.as_bytes(), "dir/a.csv").unwrap_err();
        assert_eq!(err.line(), Some(3));
        let shown = err.to_string();
        assert!(
            shown.starts_with("dir/a.csv:3: invalid record at column 24: ContextTokens '-3'"),
            "{shown}"
        );

        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16,1\n";
        let err = read_azure(text.as_bytes(), "a.csv").unwrap_err();
        assert!(
            err.to_string().contains("2 fields, the header has 3"),
            "{err}"
        );

        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\nnever read\n";
        let mut reader = AzureReader::new(text.as_bytes(), "a.csv");
        let err = reader.next().unwrap().unwrap_err();
        assert!(err
            .to_string()
            .starts_with("a.csv:2: invalid record at column 1: TIMESTAMP"));
        assert!(reader.next().is_none(), "stops after an error");
    }

    #[test]
    fn real_azure_traces() {
        for (name, rows, mean_context) in [
            ("azure/AzureLLMInferenceTrace_code.csv", 8_819, 2_048.0),
            ("azure/AzureLLMInferenceTrace_conv.csv", 19_366, 1_155.0),
        ] {
            let Some(path) = crate::trace::shared_data(name) else {
                eprintln!("skipping: {name} not found under shared/data");
                continue;
            };
            let records = read_azure_file(&path).unwrap();
            assert_eq!(records.len(), rows, "{name}");
            let mean =
                records.iter().map(|r| r.context_tokens as f64).sum::<f64>() / records.len() as f64;
            assert!((mean - mean_context).abs() < 1.0, "{name}: mean {mean}");
            assert!(records
                .windows(2)
                .all(|w| w[0].timestamp_us <= w[1].timestamp_us));
        }
    }
}
