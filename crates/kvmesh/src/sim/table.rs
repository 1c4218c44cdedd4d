//! The text output of `kvmesh sim`: a header about the input and fleet, then one column per
//! policy run.

use std::fmt::Write;
use std::path::Path;

use kvmesh_sim::{IdealCache, Workload};

use super::Run;
pub(super) use crate::number_format::thousands;

/// Bytes in binary units, three significant digits.
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ if v >= 100.0 => format!("{v:.0} {}", UNITS[unit]),
        _ if v >= 10.0 => format!("{v:.1} {}", UNITS[unit]),
        _ => format!("{v:.2} {}", UNITS[unit]),
    }
}

type Cell = fn(&Run) -> String;

/// Rows of the table: a section title (no cell function) or a metric.
const ROWS: &[(&str, Option<Cell>)] = &[
    ("cache", None),
    (
        "  block hit ratio",
        Some(|r| format!("{:.4}", r.report.hits.block_hit_ratio)),
    ),
    (
        "  / ideal",
        Some(|r| format!("{:.1}%", 100.0 * r.report.hits.ratio_to_ideal)),
    ),
    (
        "  token hit ratio",
        Some(|r| format!("{:.4}", r.report.hits.token_hit_ratio)),
    ),
    ("time to first token (s)", None),
    ("  p50", Some(|r| format!("{:.3}", r.report.ttft.p50))),
    ("  p90", Some(|r| format!("{:.3}", r.report.ttft.p90))),
    ("  p99", Some(|r| format!("{:.3}", r.report.ttft.p99))),
    ("inter-token latency (ms)", None),
    ("  p50", Some(|r| format!("{:.1}", 1e3 * r.report.itl.p50))),
    ("  p90", Some(|r| format!("{:.1}", 1e3 * r.report.itl.p90))),
    ("  p99", Some(|r| format!("{:.1}", 1e3 * r.report.itl.p99))),
    ("end-to-end latency (s)", None),
    ("  p50", Some(|r| format!("{:.2}", r.report.e2e.p50))),
    ("  p90", Some(|r| format!("{:.2}", r.report.e2e.p90))),
    ("  p99", Some(|r| format!("{:.2}", r.report.e2e.p99))),
    ("throughput", None),
    (
        "  requests/s",
        Some(|r| format!("{:.2}", r.report.throughput.requests_per_s)),
    ),
    (
        "  output tokens/s",
        Some(|r| format!("{:.0}", r.report.throughput.output_tokens_per_s)),
    ),
    ("load imbalance (max/mean)", None),
    (
        "  busy time",
        Some(|r| format!("{:.3}", r.report.load.imbalance)),
    ),
    (
        "  requests",
        Some(|r| format!("{:.3}", r.report.load.request_imbalance)),
    ),
    (
        "  prefill tokens",
        Some(|r| format!("{:.3}", r.report.load.prefill_imbalance)),
    ),
    ("engines", None),
    (
        "  completed",
        Some(|r| thousands(r.report.completed as u64)),
    ),
    ("  rejected", Some(|r| thousands(r.report.rejected as u64))),
    (
        "  preemptions",
        Some(|r| thousands(r.report.engine.preemptions)),
    ),
    (
        "  evicted blocks",
        Some(|r| thousands(r.report.engine.evicted_blocks)),
    ),
    ("memory", None),
    (
        "  peak KV, fullest worker",
        Some(|r| human_bytes(r.report.memory.peak_kv_bytes_max)),
    ),
    (
        "  router index",
        Some(|r| human_bytes(r.report.memory.index_bytes)),
    ),
    (
        "simulation wall time (s)",
        Some(|r| format!("{:.2}", r.wall_s)),
    ),
];

/// The whole text report.
pub(super) fn render(
    workload: &Workload,
    ideal: &IdealCache,
    runs: &[Run],
    capacity: &str,
    plot: Option<&Path>,
) -> String {
    let mut out = String::new();
    let secs = workload.duration_ns() as f64 / 1e9;
    let rate = if secs > 0.0 {
        format!(" ({:.2} req/s)", workload.len() as f64 / secs)
    } else {
        String::new()
    };
    let _ = writeln!(out, "kvmesh sim: {}", workload.name());
    let _ = writeln!(
        out,
        "  workload  {} requests over {} s{rate}, {}-token blocks",
        thousands(workload.len() as u64),
        thousands(secs.round() as u64),
        workload.block_size()
    );
    let _ = writeln!(
        out,
        "  ideal     block hit ratio {:.4}, token hit ratio {:.4} (one infinite cache shared by every worker)",
        ideal.block_hit_ratio(),
        ideal.token_hit_ratio()
    );
    if let Some(first) = runs.first() {
        let r = &first.report;
        let per_worker = thousands(r.memory.blocks_per_worker as u64);
        let capacity = if r.unlimited_cache {
            format!("{capacity} ({per_worker} blocks per worker)")
        } else if capacity.starts_with("device") {
            format!("{capacity}: {per_worker} blocks per worker")
        } else {
            capacity.to_string()
        };
        let _ = writeln!(
            out,
            "  fleet     {} workers, {capacity}, KV {} per block",
            r.workers,
            human_bytes(r.memory.kv_bytes_per_block)
        );
        let _ = writeln!(
            out,
            "  model     {}, event delay {} ms",
            r.cost_model,
            1e3 * r.event_delay_s
        );
    }
    out.push('\n');

    let label_width = ROWS.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let widths: Vec<usize> = runs
        .iter()
        .map(|r| r.report.policy.len().max(10) + 2)
        .collect();
    let _ = write!(out, "{:label_width$}", "");
    for (r, w) in runs.iter().zip(&widths) {
        let _ = write!(out, "{:>w$}", r.report.policy);
    }
    out.push('\n');
    for (label, cell) in ROWS {
        match cell {
            None => out.push_str(label),
            Some(cell) => {
                let _ = write!(out, "{label:label_width$}");
                for (r, w) in runs.iter().zip(&widths) {
                    let _ = write!(out, "{:>w$}", cell(r));
                }
            }
        }
        out.push('\n');
    }
    if let Some(path) = plot {
        let _ = writeln!(out, "\nplot written to {}", path.display());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(12_031), "12,031");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
        assert_eq!(human_bytes(200 << 30), "200 GiB");
    }
}
