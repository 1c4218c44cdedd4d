//! Output of `kvmesh calc` as text (aligned tables, thousands separators, human sizes), and the
//! preset list in text or JSON.
//!
//! Everything here formats a [`Report`] (or the preset list) that the parent module computed.

use std::fmt::Write as _;

use anyhow::Result;
use kvmesh_core::{presets, KvDtype, KvGeometry};

use super::{Allocation, Report, Variant};
pub(super) use crate::number_format::thousands;

/// What the seed design claimed for paging; printed beside what the data gives.
const SEED_CLAIM: &str = "utilisation ~50% -> ~95%, concurrency 4 -> 16";

pub(super) fn list_models(json: bool) -> Result<String> {
    if json {
        let models: Vec<_> = presets()
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "attention_kind": p.dims.attention_kind().to_string(),
                    "num_layers": p.dims.num_layers,
                    "num_query_heads": p.dims.num_query_heads,
                    "num_kv_heads": p.dims.num_kv_heads,
                    "head_dim": p.dims.head_dim,
                    "max_context": p.dims.max_context,
                    "note": p.note,
                })
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&models)? + "\n");
    }
    let mut table = Table::new("lrrrrrrl");
    table.row([
        "name",
        "layers",
        "q heads",
        "kv heads",
        "head dim",
        "max context",
        "f16 bytes/token",
        "attention",
    ]);
    for p in presets() {
        let d = p.dims;
        let f16 = KvGeometry::new(d, KvDtype::F16, 16)?.bytes_per_token();
        table.row([
            p.name.to_string(),
            d.num_layers.to_string(),
            d.num_query_heads.to_string(),
            d.num_kv_heads.to_string(),
            d.head_dim.to_string(),
            d.max_context
                .map_or("-".into(), |c| thousands(u64::from(c))),
            thousands(f16),
            d.attention_kind().to_string(),
        ]);
    }
    let mut out = String::from("Built-in model presets (use with --model NAME)\n");
    out += &table.render();
    out += "\nNotes\n";
    let width = presets().iter().map(|p| p.name.len()).max().unwrap_or(0);
    for p in presets() {
        let _ = writeln!(out, "  {:width$}  {}", p.name, p.note);
    }
    Ok(out)
}

pub(super) fn render(r: &Report) -> String {
    let mut out = String::new();
    let m = &r.model;
    let what = match (m.source, m.name, &m.path) {
        ("preset", Some(name), _) => format!("{name} (preset)"),
        ("config", _, Some(path)) => format!("{path} (config.json)"),
        _ => "explicit dims".to_string(),
    };
    let ctx = m
        .max_context
        .map_or("unknown".into(), |c| thousands(u64::from(c)));
    let _ = writeln!(out, "Model       {what}");
    if let Some(note) = m.note {
        let _ = writeln!(out, "Note        {note}");
    }
    let _ = writeln!(
        out,
        "Shape       {} layers, {} query heads, {} KV heads, head dim {}, max context {ctx}",
        m.num_layers, m.num_query_heads, m.num_kv_heads, m.head_dim
    );
    let _ = writeln!(out, "Attention   {}", r.attention_kind);
    let _ = writeln!(
        out,
        "KV dtype    {}, blocks of {} tokens",
        r.dtype, r.block_size
    );

    out += "\nKV cache size\n";
    let mut t = Table::new("lrrl");
    t.row(bytes_row(
        "per token per layer",
        r.bytes_per_token_per_layer,
        "",
    ));
    t.row(bytes_row("per token", r.bytes_per_token, ""));
    if r.scale_bytes_per_token > 0 {
        let parts = format!(
            "{} B data + {} B scales",
            thousands(r.data_bytes_per_token),
            thousands(r.scale_bytes_per_token)
        );
        t.row([
            "  of which".to_string(),
            String::new(),
            String::new(),
            parts,
        ]);
    }
    let per_block = format!("per block ({} tokens)", r.block_size);
    t.row(bytes_row(&per_block, r.bytes_per_block, ""));
    out += &t.render();

    out += "\nMemory budget\n";
    let mem = &r.memory;
    let mut t = Table::new("lrrl");
    t.row(bytes_row(
        "accelerator memory",
        mem.device_bytes,
        "--mem-gib",
    ));
    let usable = format!("usable at {} utilisation", mem.utilization);
    t.row(bytes_row(&usable, mem.usable_bytes, "--util"));
    let weights_note = if mem.weights_bytes == 0 {
        "--weights-gib 0: weights not subtracted; pass their size"
    } else {
        "--weights-gib"
    };
    t.row(bytes_row("minus weights", mem.weights_bytes, weights_note));
    t.row(bytes_row("KV budget", r.kv_budget_bytes, ""));
    out += &t.render();

    out += "\nCapacity\n";
    let mut t = Table::new("lrl");
    t.row([
        "blocks that fit".into(),
        thousands(r.blocks_fit),
        String::new(),
    ]);
    t.row([
        "tokens that fit".into(),
        thousands(r.tokens_fit),
        "(whole blocks)".into(),
    ]);
    let blocks_each = r.context_len.div_ceil(u64::from(r.block_size));
    t.row([
        format!("max concurrency at {} tokens", thousands(r.context_len)),
        thousands(r.max_concurrency),
        format!("({} blocks per sequence)", thousands(blocks_each)),
    ]);
    out += &t.render();

    let ctx = thousands(r.context_len);
    let _ = write!(
        out,
        "\nAttention variants ({}, same layers and head dim)\n",
        r.dtype
    );
    out += &variant_table(
        &r.variants.attention,
        &ctx,
        |v| (v.attention_kind.clone(), v.kv_heads.to_string()),
        "kv heads",
    );
    let _ = write!(out, "\nKV dtype variants ({})\n", r.attention_kind);
    out += &variant_table(
        &r.variants.dtype,
        &ctx,
        |v| (v.dtype.to_string(), String::new()),
        "",
    );
    out +=
        "  * the configuration asked for; fp8/int8/int4 include one 4-byte scale per head vector\n";

    if let Some(a) = &r.allocation {
        render_allocation(&mut out, r, a);
    }
    out
}

fn variant_table(
    variants: &[Variant],
    ctx: &str,
    label: impl Fn(&Variant) -> (String, String),
    second: &str,
) -> String {
    let mut t = Table::new(if second.is_empty() { "lrrrr" } else { "lrrrrr" });
    let mut header = vec!["variant".to_string()];
    if !second.is_empty() {
        header.push(second.to_string());
    }
    header.extend([
        "bytes/token".to_string(),
        String::new(),
        "tokens fit".to_string(),
        format!("concurrency @ {ctx}"),
    ]);
    t.row(header);
    for v in variants {
        let (name, extra) = label(v);
        let mut row = vec![if v.selected {
            format!("{name} *")
        } else {
            name
        }];
        if !second.is_empty() {
            row.push(extra);
        }
        row.extend([
            format!("{} B", thousands(v.bytes_per_token)),
            human_bytes(v.bytes_per_token),
            thousands(v.tokens_fit),
            thousands(v.max_concurrency),
        ]);
        t.row(row);
    }
    t.render()
}

fn render_allocation(out: &mut String, r: &Report, a: &Allocation) {
    out.push_str(
        "\nAllocation: contiguous pre-allocation vs paged (length = input + output tokens)\n",
    );
    let l = &a.lengths;
    match (&a.trace, l.count, l.p50, l.p99) {
        (Some(path), Some(count), Some(p50), Some(p99)) => {
            let _ = writeln!(out, "  lengths from {path} (Mooncake trace)");
            let _ = writeln!(
                out,
                "  requests {}   mean {}   p50 {}   p99 {}   max {}",
                thousands(count),
                thousands(l.mean.round() as u64),
                thousands(p50),
                thousands(p99),
                thousands(l.max)
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "  lengths: mean {} and max {} given; every request is taken at the mean",
                thousands(l.mean.round() as u64),
                thousands(l.max)
            );
        }
    }
    let why = match a.reserve_from {
        "trace_max" => "the longest request in the trace; --max-len overrides",
        _ => "--max-len",
    };
    let _ = writeln!(
        out,
        "  contiguous reserves {} tokens per request ({why})",
        thousands(a.reserve_len)
    );
    let count = l.count.unwrap_or(1);
    if a.over_reservation > 0 {
        let _ = writeln!(
            out,
            "  note: {} requests ({}) are longer than the reservation: contiguous allocation \
             cannot serve them, and its utilisation counts only their first {} tokens",
            thousands(a.over_reservation),
            percent(a.over_reservation as f64 / count as f64),
            thousands(a.reserve_len)
        );
    }
    if let (Some(over), Some(ctx)) = (a.over_model_context, r.model.max_context) {
        if over > 0 {
            let _ = writeln!(
                out,
                "  note: {} requests ({}) are longer than the model's max context of {} tokens; \
                 they are counted at full length",
                thousands(over),
                percent(over as f64 / count as f64),
                thousands(u64::from(ctx))
            );
        }
    }
    out.push('\n');
    let mut t = Table::new("lrr");
    t.row([
        String::new(),
        "contiguous".to_string(),
        format!("paged ({}-token blocks)", r.block_size),
    ]);
    t.row([
        "reserved per request".to_string(),
        format!(
            "{} tokens",
            thousands(a.contiguous.reserved_tokens_per_request.round() as u64)
        ),
        format!(
            "{} tokens",
            thousands(a.paged.reserved_tokens_per_request.round() as u64)
        ),
    ]);
    t.row([
        "memory utilisation".to_string(),
        percent(a.contiguous.utilization),
        percent(a.paged.utilization),
    ]);
    t.row([
        "max concurrency".to_string(),
        thousands(a.contiguous.max_concurrency),
        thousands(a.paged.max_concurrency),
    ]);
    out.push_str(&t.render());
    let gain = a
        .concurrency_gain
        .map_or("n/a: contiguous fits no request".to_string(), |g| {
            format!("{g:.1}x")
        });
    let _ = writeln!(out, "  paged / contiguous concurrency: {gain}");
    let _ = writeln!(
        out,
        "  seed claim: {SEED_CLAIM}; these lengths give utilisation {} -> {}, concurrency {} -> {}",
        percent(a.contiguous.utilization),
        percent(a.paged.utilization),
        thousands(a.contiguous.max_concurrency),
        thousands(a.paged.max_concurrency)
    );
}

fn bytes_row(label: &str, bytes: u64, note: &str) -> [String; 4] {
    [
        label.to_string(),
        format!("{} B", thousands(bytes)),
        // Below 1 KiB the raw count says it all.
        if bytes < 1024 {
            String::new()
        } else {
            human_bytes(bytes)
        },
        note.to_string(),
    ]
}

/// A left/right-aligned text table, indented by two spaces, columns three spaces apart.
struct Table {
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `align` has one `l` or `r` per column.
    fn new(align: &str) -> Self {
        Table {
            right: align.chars().map(|c| c == 'r').collect(),
            rows: Vec::new(),
        }
    }

    fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    fn render(&self) -> String {
        let cols = self.right.len();
        let mut widths = vec![0; cols];
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::from(" ");
            for (i, cell) in row.iter().enumerate().take(cols) {
                let w = widths[i];
                line.push_str(if i == 0 { " " } else { "   " });
                if self.right[i] {
                    let _ = write!(line, "{cell:>w$}");
                } else {
                    let _ = write!(line, "{cell:<w$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes in binary units with one decimal: `"320.0 KiB"`; plain bytes below 1 KiB.
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `0.9` -> `"90.0%"`.
fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(327_680), "327,680");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(327_680), "320.0 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(human_bytes(72 << 30), "72.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(percent(0.9), "90.0%");
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new("lr");
        t.row(["a", "1"]);
        t.row(["long name", "1,000"]);
        assert_eq!(t.render(), "  a               1\n  long name   1,000\n");
    }
}
