//! Fuzzes `ModelDims::from_hf_config` (a Hugging Face `config.json` -> model dims).
//!
//! Contract checked, from the function's documentation:
//! * `Ok(dims)`: the dims validate (every count non-zero, KV heads divide query heads), the
//!   document is a JSON object, and the documented primary field names, when present (in
//!   `text_config` if that is an object), are the values returned; without any KV-head field or
//!   `multi_query`, the model is MHA. A config written back from the dims parses to the same dims.
//! * `Err(ConfigSyntax)` only for text that is not JSON, with a 1-based line; `Err(ConfigNotObject)`
//!   only for JSON that is not an object; any other error only for a JSON object.
//!
//! Input: the bytes as UTF-8 (other inputs are skipped: the caller reads the file as a string).

#![no_main]

use kvmesh_core::{AttentionKind, GeometryError, ModelDims};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    match ModelDims::from_hf_config(text) {
        Ok(dims) => check_ok(dims, parsed.as_ref()),
        Err(err) => check_err(&err, parsed.as_ref()),
    }
});

fn check_ok(dims: ModelDims, parsed: Option<&Value>) {
    assert!(dims.validate().is_ok(), "Ok dims do not validate: {dims:?}");
    for (field, n) in [
        ("num_layers", dims.num_layers),
        ("num_query_heads", dims.num_query_heads),
        ("num_kv_heads", dims.num_kv_heads),
        ("head_dim", dims.head_dim),
    ] {
        assert_ne!(n, 0, "{field} is zero in Ok dims {dims:?}");
    }
    assert_eq!(
        dims.num_query_heads % dims.num_kv_heads,
        0,
        "KV heads do not divide query heads: {dims:?}"
    );
    let expected_kind = if dims.num_kv_heads == dims.num_query_heads {
        AttentionKind::Mha
    } else if dims.num_kv_heads == 1 {
        AttentionKind::Mqa
    } else {
        AttentionKind::Gqa {
            group: dims.num_query_heads / dims.num_kv_heads,
        }
    };
    assert_eq!(dims.attention_kind(), expected_kind, "{dims:?}");

    // Ok only for a JSON object; the documented primary names are honoured.
    let root = parsed.expect("Ok from text that serde_json rejects");
    assert!(root.is_object(), "Ok from non-object JSON: {root}");
    let cfg = match root.get("text_config") {
        Some(text) if text.is_object() => text,
        _ => root,
    };
    let field = |name: &str| cfg.get(name).filter(|v| !v.is_null());
    let as_u32 = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    for (name, got) in [
        ("num_hidden_layers", Some(dims.num_layers)),
        ("num_attention_heads", Some(dims.num_query_heads)),
        ("num_key_value_heads", Some(dims.num_kv_heads)),
        ("head_dim", Some(dims.head_dim)),
        ("max_position_embeddings", dims.max_context),
    ] {
        if let Some(v) = field(name) {
            assert_eq!(as_u32(v), got, "'{name}' is {v} but dims are {dims:?}");
        }
    }
    let kv_fields = [
        "num_key_value_heads",
        "num_kv_heads",
        "n_head_kv",
        "multi_query_group_num",
    ];
    if kv_fields.iter().all(|f| field(f).is_none()) && field("multi_query").is_none() {
        assert_eq!(
            dims.num_kv_heads, dims.num_query_heads,
            "no KV-head field, so MHA expected: {dims:?}"
        );
    }

    // Round trip through the canonical field names.
    let mut doc = serde_json::json!({
        "num_hidden_layers": dims.num_layers,
        "num_attention_heads": dims.num_query_heads,
        "num_key_value_heads": dims.num_kv_heads,
        "head_dim": dims.head_dim,
    });
    if let Some(ctx) = dims.max_context {
        doc["max_position_embeddings"] = ctx.into();
    }
    let again = ModelDims::from_hf_config(&doc.to_string())
        .unwrap_or_else(|e| panic!("round trip of {dims:?} fails: {e}"));
    assert_eq!(again, dims, "round trip changed the dims");
}

fn check_err(err: &GeometryError, parsed: Option<&Value>) {
    let shown = err.to_string();
    assert!(!shown.is_empty());
    match err {
        GeometryError::ConfigSyntax { line, .. } => {
            // `column` is documented 1-based too, but serde_json reports column 0 at the start of
            // a line (e.g. "" or "{\n"), so only the line is checked; see the fuzz report.
            assert!(*line >= 1, "syntax error line {line} < 1: {shown}");
            assert!(parsed.is_none(), "syntax error for valid JSON: {shown}");
        }
        GeometryError::ConfigNotObject => {
            let root = parsed.expect("ConfigNotObject for text that is not JSON");
            assert!(!root.is_object(), "ConfigNotObject for an object");
        }
        _ => {
            let root = parsed.expect("field error for text that is not JSON");
            assert!(root.is_object(), "field error for non-object JSON: {shown}");
        }
    }
}
