//! Prometheus metrics, named like vLLM's with the prefix `kvmesh:` so dashboards port by a
//! rename, in the Prometheus text exposition format (0.0.4).
//!
//! Each engine worker owns one [`WorkerMetrics`] and is its only writer (relaxed atomics: a
//! scrape may see one counter a step ahead of another, never a torn value). The HTTP side only
//! reads them when `/metrics` is scraped, so recording costs a few uncontended atomic adds per
//! token and no lock. Router counters come from the router's [`RouterStats`] at scrape time.
//!
//! | metric | type | meaning (as vLLM's where the name matches) |
//! |---|---|---|
//! | `time_to_first_token_seconds` | histogram | arrival at the server to the first token |
//! | `inter_token_latency_seconds` | histogram | between consecutive tokens of a request |
//! | `e2e_request_latency_seconds` | histogram | arrival to the last token |
//! | `request_queue_time_seconds` | histogram | arrival to first admission by the scheduler |
//! | `prompt_tokens_total` | counter | prompt tokens of requests admitted |
//! | `generation_tokens_total` | counter | tokens generated |
//! | `prefix_cache_queries_total` / `prefix_cache_hits_total` | counter | prompt tokens looked up in the prefix cache / found there |
//! | `num_preemptions_total` | counter | requests preempted for memory |
//! | `request_success_total{finished_reason}` | counter | requests finished, by `stop` / `length` / `abort` |
//! | `num_requests_running` / `num_requests_waiting` | gauge | the scheduler's queues |
//! | `kv_cache_usage_perc` | gauge | fraction (0-1) of KV blocks held by requests |
//! | `kv_blocks{state}` | gauge | blocks `used` (held by requests), `cached` (reusable, unreferenced), `free` |
//! | `routing_decisions_total{reason}` | counter | the router's choices by `overlap` / `load` / `fallback` |
//! | `requests_rejected_total{reason}` | counter | requests refused before reaching a worker |
//!
//! All worker series carry `model_name` and `worker` labels.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use kvmesh_index::{RouteReason, RouterStats};

/// Latency buckets in seconds (vLLM's TTFT buckets, which also cover ITL and E2E here).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// A fixed-bucket histogram of seconds with one writer.
#[derive(Debug)]
pub struct Histogram {
    counts: Vec<AtomicU64>,
    /// The sum, as f64 bits.
    sum: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: LATENCY_BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation (seconds). Single writer: the sum's read-modify-write is not
    /// atomic against another writer.
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| seconds <= b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        let sum = f64::from_bits(self.sum.load(Relaxed)) + seconds;
        self.sum.store(sum.to_bits(), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, c) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = f64::from_bits(self.sum.load(Relaxed));
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Finish reasons counted by `request_success_total`, in label order.
pub const FINISH_REASONS: [&str; 3] = ["stop", "length", "abort"];

/// One worker's metrics; see the module docs for each.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// `time_to_first_token_seconds`.
    pub ttft: Histogram,
    /// `inter_token_latency_seconds`.
    pub itl: Histogram,
    /// `e2e_request_latency_seconds`.
    pub e2e: Histogram,
    /// `request_queue_time_seconds`.
    pub queue: Histogram,
    /// `prompt_tokens_total`.
    pub prompt_tokens: AtomicU64,
    /// `generation_tokens_total`.
    pub generation_tokens: AtomicU64,
    /// `prefix_cache_queries_total` (tokens).
    pub prefix_cache_queries: AtomicU64,
    /// `prefix_cache_hits_total` (tokens).
    pub prefix_cache_hits: AtomicU64,
    /// `num_preemptions_total`.
    pub preemptions: AtomicU64,
    /// `request_success_total`, by [`FINISH_REASONS`].
    pub finished: [AtomicU64; 3],
    /// `num_requests_running`.
    pub running: AtomicU64,
    /// `num_requests_waiting`.
    pub waiting: AtomicU64,
    /// Blocks held by requests.
    pub blocks_used: AtomicU64,
    /// Unreferenced blocks kept for reuse.
    pub blocks_cached: AtomicU64,
    /// Blocks on the free list.
    pub blocks_free: AtomicU64,
    /// All blocks.
    pub blocks_total: AtomicU64,
}

impl WorkerMetrics {
    /// Counts one finished request.
    pub fn count_finish(&self, reason: &str) {
        if let Some(i) = FINISH_REASONS.iter().position(|&r| r == reason) {
            self.finished[i].fetch_add(1, Relaxed);
        }
    }

    /// Blocks held by requests now.
    pub fn blocks_used(&self) -> u64 {
        self.blocks_used.load(Relaxed)
    }
}

/// Requests refused before reaching a worker, by reason (label order of
/// [`REJECT_REASONS`]).
#[derive(Debug, Default)]
pub struct ServerMetrics {
    rejected: [AtomicU64; 4],
}

/// Reasons counted by `requests_rejected_total`.
pub const REJECT_REASONS: [&str; 4] = ["queue_full", "invalid", "unauthorized", "unavailable"];

impl ServerMetrics {
    /// Counts one rejected request.
    pub fn reject(&self, reason: &str) {
        if let Some(i) = REJECT_REASONS.iter().position(|&r| r == reason) {
            self.rejected[i].fetch_add(1, Relaxed);
        }
    }
}

/// A metric family of every worker: name, help text, and how to read it from one worker.
type HistogramFamily = (&'static str, &'static str, fn(&WorkerMetrics) -> &Histogram);
/// A counter family, as [`HistogramFamily`].
type CounterFamily = (&'static str, &'static str, fn(&WorkerMetrics) -> &AtomicU64);
/// A gauge family, as [`HistogramFamily`].
type GaugeFamily = (&'static str, &'static str, fn(&WorkerMetrics) -> f64);

/// Renders every metric in the text exposition format.
pub fn render(
    model: &str,
    workers: &[&WorkerMetrics],
    router: Option<&RouterStats>,
    server: &ServerMetrics,
) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let model = escape_label(model);
    let labels: Vec<String> = (0..workers.len())
        .map(|w| format!("model_name=\"{model}\",worker=\"{w}\""))
        .collect();

    let histograms: [HistogramFamily; 4] = [
        (
            "time_to_first_token_seconds",
            "Time from arrival to the first token.",
            |m| &m.ttft,
        ),
        (
            "inter_token_latency_seconds",
            "Time between consecutive output tokens.",
            |m| &m.itl,
        ),
        (
            "e2e_request_latency_seconds",
            "Time from arrival to the last token.",
            |m| &m.e2e,
        ),
        (
            "request_queue_time_seconds",
            "Time from arrival to first admission.",
            |m| &m.queue,
        ),
    ];
    for (name, help, get) in histograms {
        let name = format!("kvmesh:{name}");
        header(&mut out, &name, help, "histogram");
        for (m, l) in workers.iter().zip(&labels) {
            get(m).render(&mut out, &name, l);
        }
    }

    let counters: [CounterFamily; 5] = [
        (
            "prompt_tokens_total",
            "Prompt tokens of admitted requests.",
            |m| &m.prompt_tokens,
        ),
        ("generation_tokens_total", "Generated tokens.", |m| {
            &m.generation_tokens
        }),
        (
            "prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
            |m| &m.prefix_cache_queries,
        ),
        (
            "prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache.",
            |m| &m.prefix_cache_hits,
        ),
        (
            "num_preemptions_total",
            "Requests preempted for KV memory.",
            |m| &m.preemptions,
        ),
    ];
    for (name, help, get) in counters {
        let name = format!("kvmesh:{name}");
        header(&mut out, &name, help, "counter");
        for (m, l) in workers.iter().zip(&labels) {
            let _ = writeln!(out, "{name}{{{l}}} {}", get(m).load(Relaxed));
        }
    }

    let name = "kvmesh:request_success_total";
    header(
        &mut out,
        name,
        "Finished requests by finish reason.",
        "counter",
    );
    for (m, l) in workers.iter().zip(&labels) {
        for (reason, c) in FINISH_REASONS.iter().zip(&m.finished) {
            let v = c.load(Relaxed);
            let _ = writeln!(out, "{name}{{{l},finished_reason=\"{reason}\"}} {v}");
        }
    }

    let gauges: [GaugeFamily; 3] = [
        (
            "num_requests_running",
            "Requests holding KV in the scheduler.",
            |m| m.running.load(Relaxed) as f64,
        ),
        (
            "num_requests_waiting",
            "Requests queued in the scheduler.",
            |m| m.waiting.load(Relaxed) as f64,
        ),
        (
            "kv_cache_usage_perc",
            "Fraction (0-1) of KV blocks held by requests.",
            |m| {
                let total = m.blocks_total.load(Relaxed).max(1) as f64;
                m.blocks_used.load(Relaxed) as f64 / total
            },
        ),
    ];
    for (name, help, get) in gauges {
        let name = format!("kvmesh:{name}");
        header(&mut out, &name, help, "gauge");
        for (m, l) in workers.iter().zip(&labels) {
            let _ = writeln!(out, "{name}{{{l}}} {}", get(m));
        }
    }

    let name = "kvmesh:kv_blocks";
    header(
        &mut out,
        name,
        "KV blocks by state: used, cached (reusable), free.",
        "gauge",
    );
    for (m, l) in workers.iter().zip(&labels) {
        for (state, v) in [
            ("used", &m.blocks_used),
            ("cached", &m.blocks_cached),
            ("free", &m.blocks_free),
        ] {
            let _ = writeln!(out, "{name}{{{l},state=\"{state}\"}} {}", v.load(Relaxed));
        }
    }

    if let Some(r) = router {
        let name = "kvmesh:routing_decisions_total";
        header(&mut out, name, "Routing decisions by reason.", "counter");
        for (reason, v) in RouteReason::ALL.iter().zip(r.decisions) {
            let reason = reason.name();
            let _ = writeln!(
                out,
                "{name}{{model_name=\"{model}\",reason=\"{reason}\"}} {v}"
            );
        }
        let name = "kvmesh:router_kv_events_total";
        header(
            &mut out,
            name,
            "KV events applied to the router's index.",
            "counter",
        );
        let _ = writeln!(out, "{name}{{model_name=\"{model}\"}} {}", r.events);
        let name = "kvmesh:router_index_blocks";
        header(
            &mut out,
            name,
            "Blocks in the router's prefix index.",
            "gauge",
        );
        let _ = writeln!(out, "{name}{{model_name=\"{model}\"}} {}", r.index_blocks);
    }

    let name = "kvmesh:requests_rejected_total";
    header(
        &mut out,
        name,
        "Requests refused before reaching a worker.",
        "counter",
    );
    for (reason, v) in REJECT_REASONS.iter().zip(&server.rejected) {
        let v = v.load(Relaxed);
        let _ = writeln!(
            out,
            "{name}{{model_name=\"{model}\",reason=\"{reason}\"}} {v}"
        );
    }
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        for s in [0.0005, 0.003, 0.003, 3.0, 1e6] {
            h.observe(s);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "w=\"0\"");
        assert!(out.contains("x_bucket{w=\"0\",le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{w=\"0\",le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{w=\"0\",le=\"5\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{w=\"0\",le=\"2560\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{w=\"0\",le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_count{w=\"0\"} 5\n"), "{out}");
    }

    #[test]
    fn every_family_has_help_and_type_and_labels_are_escaped() {
        let w = WorkerMetrics::default();
        w.count_finish("length");
        w.count_finish("bogus");
        let text = render(
            "a\"b",
            &[&w, &w],
            Some(&RouterStats::default()),
            &ServerMetrics::default(),
        );
        assert!(
            text.contains("model_name=\"a\\\"b\",worker=\"1\""),
            "{text}"
        );
        assert!(text.contains(
            "kvmesh:request_success_total{model_name=\"a\\\"b\",worker=\"0\",finished_reason=\"length\"} 1"
        ));
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(types, helps);
        assert_eq!(types, 18);
    }
}
