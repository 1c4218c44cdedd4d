//! kvmesh-sim: request traces and, later, the kvmesh cluster simulator.
//!
//! Today the crate reads traces. [`MooncakeReader`] streams the records of a Mooncake JSON-lines
//! trace ([`MooncakeRecord`]: arrival time, input and output lengths, 512-token prefix block
//! ids) from any reader with bounded memory; [`read_mooncake_file`] loads a whole file. Errors
//! ([`TraceError`]) name the file and the 1-based line at fault.
//!
//! ```no_run
//! let records = kvmesh_sim::read_mooncake_file("conversation_trace.jsonl")?;
//! let tokens: u64 = records.iter().map(|r| r.total_length()).sum();
//! println!("{} requests, {tokens} tokens of KV at completion", records.len());
//! # Ok::<(), kvmesh_sim::TraceError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod trace;

pub use trace::{
    read_mooncake, read_mooncake_file, MooncakeReader, MooncakeRecord, TraceError, TraceErrorKind,
    MAX_LINE_BYTES, MOONCAKE_BLOCK_TOKENS,
};
