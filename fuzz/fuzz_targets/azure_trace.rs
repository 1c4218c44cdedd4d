//! Fuzzes the Azure trace loader: `AzureReader` (streaming, with a line cap) and `read_azure`.
//!
//! Input layout: `[cap, body...]`, `cap` the reader's `max_line_bytes` (0..=255, so the limit
//! is hit often).
//!
//! Contract checked:
//! * No panic, and no line longer than the cap is accepted.
//! * `read_azure` (default cap) returns exactly the streaming reader's records up to its
//!   first error, or that error.
//! * Every error names the source and a 1-based line that exists (at most one past the last).
//! * Every record round-trips: written back as `YYYY-MM-DD HH:MM:SS.ffffff,context,generated`
//!   under a canonical header, it parses to the same record (the timestamp parser is the
//!   inverse of the calendar arithmetic, microseconds included).

#![no_main]

use kvmesh_sim::{read_azure, AzureReader, AzureRecord};
use libfuzzer_sys::fuzz_target;

const SOURCE: &str = "fuzz.csv";

fuzz_target!(|data: &[u8]| {
    let Some((&cap, body)) = data.split_first() else {
        return;
    };
    let lines = body.split(|&b| b == b'\n').count() as u64;

    // Small cap: every accepted line is within it.
    let mut reader = AzureReader::new(body, SOURCE).max_line_bytes(usize::from(cap));
    while let Some(item) = reader.next() {
        match item {
            Ok(record) => round_trip(record),
            Err(err) => check_error(&err, lines),
        }
        assert!(reader.line() <= lines, "line {} of {lines}", reader.line());
    }

    // Default cap: the whole-source function agrees with the stream up to its first error.
    let mut streamed = Vec::new();
    let mut first_error = None;
    for item in AzureReader::new(body, SOURCE) {
        match item {
            Ok(record) => streamed.push(record),
            Err(err) => {
                first_error = Some(err.to_string());
                break;
            }
        }
    }
    match (read_azure(body, SOURCE), first_error) {
        (Ok(records), None) => assert_eq!(records, streamed),
        (Err(err), Some(first)) => assert_eq!(err.to_string(), first),
        (got, want) => panic!("read_azure {got:?} but the stream's first error is {want:?}"),
    }
});

fn check_error(err: &kvmesh_sim::TraceError, lines: u64) {
    let shown = err.to_string();
    assert!(shown.starts_with(SOURCE), "{shown}");
    if let Some(line) = err.line() {
        assert!(
            (1..=lines + 1).contains(&line),
            "line {line} of {lines}: {shown}"
        );
    }
}

fn round_trip(r: AzureRecord) {
    let secs = r.timestamp_us / 1_000_000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    if y > 9999 {
        return; // a leap second ending 9999-12-31 rolls into a year the format cannot write
    }
    let text = format!(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06},{},{}\n",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        r.timestamp_us % 1_000_000,
        r.context_tokens,
        r.generated_tokens,
    );
    let again = read_azure(text.as_bytes(), SOURCE)
        .unwrap_or_else(|e| panic!("{r:?} written as {text:?} does not parse: {e}"));
    // A leap second (:60) is accepted on input and lands on the next minute's :00.
    assert_eq!(again, vec![r], "{text:?}");
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`, independent of the parser's `days_from_civil`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m, d)
}
