//! The numbers of one run, defined as vLLM's `bench serve` defines them, with its JSON key
//! names so existing plotting scripts read kvmesh's output.
//!
//! | key | definition |
//! |---|---|
//! | `completed` / `failed` | requests that streamed an answer / that did not (`errors` by kind) |
//! | `duration` | seconds from the first send to the last completion |
//! | `request_throughput` | completed / duration |
//! | `output_throughput` | generated tokens / duration |
//! | `total_token_throughput` | (prompt + generated tokens) / duration |
//! | `*_ttft_ms` | time to first token: send to the first chunk with text |
//! | `*_tpot_ms` | time per output token: (e2e - ttft) / (output tokens - 1), requests with more than one token |
//! | `*_itl_ms` | inter-token latency: every gap between text chunks |
//! | `*_e2el_ms` | end-to-end latency: send to the end of the stream |
//! | `request_goodput` | completed requests per second that met every `--goodput` bound |
//! | `cached_tokens`, `prefix_hit_ratio` | prompt tokens the server reported cached, and their share of all prompt tokens |
//! | `server_rss_start_mib`, `server_rss_end_mib` | resident memory of a `serve:` target when ready and after the (last) run |
//! | `server_blocks_used_after` | a kvmesh target's KV blocks still held by requests after the run (0: back to idle) |
//!
//! Each latency has `mean_`, `median_`, `std_` and `pNN_` (for each `--percentiles` value)
//! forms; percentiles interpolate linearly between order statistics (numpy's default, as
//! vLLM).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::runner::{errors_by_kind, RequestRecord};

/// A service-level bound for goodput.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slo {
    /// `ttft`, `tpot` or `e2el`.
    pub metric: SloMetric,
    /// The bound in milliseconds.
    pub ms: f64,
}

/// What an [`Slo`] bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SloMetric {
    /// Time to first token.
    Ttft,
    /// Time per output token.
    Tpot,
    /// End-to-end latency.
    E2el,
}

impl std::str::FromStr for Slo {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (k, v) = s
            .split_once(':')
            .ok_or_else(|| format!("expected KEY:MS (ttft:500), got {s:?}"))?;
        let metric = match k {
            "ttft" => SloMetric::Ttft,
            "tpot" => SloMetric::Tpot,
            "e2el" => SloMetric::E2el,
            _ => {
                return Err(format!(
                    "unknown goodput metric {k:?}: use ttft, tpot or e2el"
                ))
            }
        };
        let ms: f64 = v.parse().map_err(|_| format!("bad milliseconds {v:?}"))?;
        if !(ms.is_finite() && ms > 0.0) {
            return Err(format!("the bound must be positive, got {ms}"));
        }
        Ok(Slo { metric, ms })
    }
}

/// One run's report: the scalar metrics (in `bench serve`'s names) and the series plots use.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The target's label.
    pub target: String,
    /// Metric name to value, in `bench serve`'s key names.
    pub metrics: BTreeMap<String, f64>,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// `(sent_at, ttft)` seconds per completed request, for the TTFT-over-time plot.
    #[serde(skip)]
    pub ttft_series: Vec<(f64, f64)>,
    /// Every inter-token gap, seconds.
    #[serde(skip)]
    pub itls: Vec<f64>,
}

/// Percentile `p` (0-100) of sorted `v`, linear interpolation; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

fn stats(metrics: &mut BTreeMap<String, f64>, name: &str, values_s: &[f64], percentiles: &[f64]) {
    let mut v: Vec<f64> = values_s.iter().map(|s| s * 1e3).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    metrics.insert(format!("mean_{name}_ms"), mean);
    metrics.insert(format!("median_{name}_ms"), percentile(&v, 50.0));
    metrics.insert(format!("std_{name}_ms"), var.sqrt());
    for &p in percentiles {
        metrics.insert(format!("p{}_{name}_ms", format_p(p)), percentile(&v, p));
    }
}

/// `99` for 99.0, `99.9` for 99.9 (bench serve's key spelling).
pub fn format_p(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{}", p as u64)
    } else {
        format!("{p}")
    }
}

impl Report {
    /// Computes the report of `records` over `duration` seconds.
    pub fn new(
        target: &str,
        records: &[RequestRecord],
        duration: f64,
        percentiles: &[f64],
        slos: &[Slo],
    ) -> Report {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.error.is_none()).collect();
        let duration = duration.max(1e-9);
        let input: u64 = ok.iter().map(|r| r.prompt_tokens).sum();
        let output: u64 = ok.iter().map(|r| r.output_tokens).sum();
        let cached: u64 = ok.iter().filter_map(|r| r.cached_tokens).sum();
        let ttfts: Vec<f64> = ok.iter().filter_map(|r| r.ttft).collect();
        let tpot = |r: &RequestRecord| {
            (r.output_tokens > 1)
                .then(|| (r.e2e - r.ttft.unwrap_or(0.0)) / (r.output_tokens - 1) as f64)
        };
        let tpots: Vec<f64> = ok.iter().filter_map(|r| tpot(r)).collect();
        let itls: Vec<f64> = ok.iter().flat_map(|r| r.itl.iter().copied()).collect();
        let e2els: Vec<f64> = ok.iter().map(|r| r.e2e).collect();
        let good = ok
            .iter()
            .filter(|r| {
                slos.iter().all(|s| {
                    let v = match s.metric {
                        SloMetric::Ttft => r.ttft,
                        SloMetric::Tpot => tpot(r).or(Some(0.0)),
                        SloMetric::E2el => Some(r.e2e),
                    };
                    v.is_some_and(|v| v * 1e3 <= s.ms)
                })
            })
            .count();

        let mut m = BTreeMap::new();
        m.insert("completed".into(), ok.len() as f64);
        m.insert("failed".into(), (records.len() - ok.len()) as f64);
        m.insert("duration".into(), duration);
        m.insert("total_input_tokens".into(), input as f64);
        m.insert("total_output_tokens".into(), output as f64);
        m.insert("request_throughput".into(), ok.len() as f64 / duration);
        m.insert("output_throughput".into(), output as f64 / duration);
        m.insert(
            "total_token_throughput".into(),
            (input + output) as f64 / duration,
        );
        if !slos.is_empty() {
            m.insert("request_goodput".into(), good as f64 / duration);
        }
        m.insert("cached_tokens".into(), cached as f64);
        m.insert(
            "prefix_hit_ratio".into(),
            if input > 0 {
                cached as f64 / input as f64
            } else {
                0.0
            },
        );
        stats(&mut m, "ttft", &ttfts, percentiles);
        stats(&mut m, "tpot", &tpots, percentiles);
        stats(&mut m, "itl", &itls, percentiles);
        stats(&mut m, "e2el", &e2els, percentiles);
        Report {
            target: target.to_string(),
            metrics: m,
            errors: errors_by_kind(records).into_iter().collect(),
            ttft_series: ok
                .iter()
                .filter_map(|r| r.ttft.map(|t| (r.sent_at, t)))
                .collect(),
            itls,
        }
    }

    /// `bench serve`-shaped JSON: the metrics at the top level, plus `target` and `errors`.
    pub fn json(&self) -> Value {
        let mut map = Map::new();
        map.insert("target".into(), json!(self.target));
        for (k, v) in &self.metrics {
            let value = if matches!(
                k.as_str(),
                "completed"
                    | "failed"
                    | "total_input_tokens"
                    | "total_output_tokens"
                    | "cached_tokens"
            ) {
                json!(*v as u64)
            } else {
                json!(v)
            };
            map.insert(k.clone(), value);
        }
        map.insert("errors".into(), json!(self.errors));
        Value::Object(map)
    }
}

/// Rows of the side-by-side table: (label, key, decimals).
fn rows(percentiles: &[f64]) -> Vec<(String, String, usize)> {
    let mut rows: Vec<(String, String, usize)> = [
        ("completed", "completed", 0),
        ("failed", "failed", 0),
        ("duration (s)", "duration", 2),
        ("request throughput (req/s)", "request_throughput", 3),
        ("output throughput (tok/s)", "output_throughput", 1),
        (
            "total token throughput (tok/s)",
            "total_token_throughput",
            1,
        ),
        ("request goodput (req/s)", "request_goodput", 3),
        ("prompt tokens", "total_input_tokens", 0),
        ("cached prompt tokens", "cached_tokens", 0),
        ("prefix hit ratio", "prefix_hit_ratio", 3),
        ("server RSS at start (MiB)", "server_rss_start_mib", 1),
        ("server RSS at end (MiB)", "server_rss_end_mib", 1),
        (
            "KV blocks held after the run",
            "server_blocks_used_after",
            0,
        ),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
    .collect();
    for (name, key) in [
        ("TTFT", "ttft"),
        ("TPOT", "tpot"),
        ("ITL", "itl"),
        ("E2E", "e2el"),
    ] {
        rows.push((format!("{name} mean (ms)"), format!("mean_{key}_ms"), 1));
        rows.push((format!("{name} median (ms)"), format!("median_{key}_ms"), 1));
        for &p in percentiles {
            let p = format_p(p);
            rows.push((format!("{name} p{p} (ms)"), format!("p{p}_{key}_ms"), 1));
        }
    }
    rows
}

/// A plain-text table, one column per report.
pub fn table(reports: &[Report], percentiles: &[f64]) -> String {
    let mut out = String::new();
    let label_w = 32;
    let col_w = reports
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(0)
        .max(14);
    let _ = write!(out, "{:<label_w$}", "");
    for r in reports {
        let _ = write!(out, " {:>col_w$}", r.target);
    }
    out.push('\n');
    for (label, key, decimals) in rows(percentiles) {
        if reports.iter().all(|r| !r.metrics.contains_key(&key)) {
            continue;
        }
        let _ = write!(out, "{label:<label_w$}");
        for r in reports {
            let cell = r
                .metrics
                .get(&key)
                .map_or("-".to_string(), |v| format!("{v:.decimals$}"));
            let _ = write!(out, " {cell:>col_w$}");
        }
        out.push('\n');
    }
    for r in reports.iter().filter(|r| !r.errors.is_empty()) {
        let _ = writeln!(out, "errors of {}: {:?}", r.target, r.errors);
    }
    out
}

/// The same table in markdown, with a ratio column against the first report when there are
/// two or more.
pub fn markdown(reports: &[Report], percentiles: &[f64]) -> String {
    let mut out = String::from("| metric |");
    for r in reports {
        let _ = write!(out, " {} |", r.target);
    }
    let ratios = reports.len() >= 2;
    if ratios {
        for r in &reports[1..] {
            let _ = write!(out, " {} / {} |", r.target, reports[0].target);
        }
    }
    out.push_str("\n|---|");
    for _ in 0..reports.len() + if ratios { reports.len() - 1 } else { 0 } {
        out.push_str("---:|");
    }
    out.push('\n');
    for (label, key, decimals) in rows(percentiles) {
        if reports.iter().all(|r| !r.metrics.contains_key(&key)) {
            continue;
        }
        let _ = write!(out, "| {label} |");
        for r in reports {
            let cell = r
                .metrics
                .get(&key)
                .map_or("-".to_string(), |v| format!("{v:.decimals$}"));
            let _ = write!(out, " {cell} |");
        }
        if ratios {
            let base = reports[0].metrics.get(&key).copied();
            for r in &reports[1..] {
                let cell = match (r.metrics.get(&key), base) {
                    (Some(v), Some(b)) if b != 0.0 => format!("{:.2}", v / b),
                    _ => "-".into(),
                };
                let _ = write!(out, " {cell} |");
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sent_at: f64, ttft: f64, e2e: f64, out: u64) -> RequestRecord {
        RequestRecord {
            sent_at,
            ttft: Some(ttft),
            itl: vec![(e2e - ttft) / (out - 1) as f64; out as usize - 1],
            e2e,
            prompt_tokens: 100,
            output_tokens: out,
            cached_tokens: Some(50),
            error: None,
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn metrics_follow_bench_serve_definitions() {
        let records = vec![
            record(0.0, 0.1, 1.1, 11),
            record(0.5, 0.3, 2.3, 11),
            RequestRecord {
                error: Some("http_429".into()),
                ..RequestRecord::default()
            },
        ];
        let slos = ["ttft:200".parse().unwrap()];
        let r = Report::new("x", &records, 2.0, &[99.0], &slos);
        let m = |k: &str| r.metrics[k];
        assert_eq!(m("completed"), 2.0);
        assert_eq!(m("failed"), 1.0);
        assert_eq!(m("request_throughput"), 1.0);
        assert_eq!(m("output_throughput"), 11.0);
        assert_eq!(m("total_token_throughput"), 111.0);
        assert!((m("median_ttft_ms") - 200.0).abs() < 1e-9);
        assert!((m("mean_tpot_ms") - 150.0).abs() < 1e-9); // (1000/10 + 2000/10) / 2
        assert!((m("p99_ttft_ms") - 298.0).abs() < 1e-9);
        assert_eq!(m("request_goodput"), 0.5);
        assert_eq!(m("prefix_hit_ratio"), 0.5);
        assert_eq!(r.errors["http_429"], 1);
        let j = r.json();
        assert_eq!(j["completed"], 2);
        assert!(j["median_ttft_ms"].is_f64());
        let md = markdown(&[r.clone(), r.clone()], &[99.0]);
        assert!(md.contains("| x / x |"), "{md}");
        assert!(
            md.contains("| TTFT median (ms) | 200.0 | 200.0 | 1.00 |"),
            "{md}"
        );
        assert!(table(&[r], &[99.0]).contains("TTFT p99 (ms)"));
        assert!("ttft".parse::<Slo>().is_err());
        assert!("xyz:3".parse::<Slo>().is_err());
    }
}
