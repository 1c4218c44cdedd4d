//! Errors of kvmesh-engine.

use std::path::PathBuf;

use thiserror::Error;

/// A model file that cannot be loaded. Offsets are bytes from the start of the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a GGUF file.
    #[error("not a GGUF file: starts with {found:?}, expected \"GGUF\"")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A GGUF version other than 2 or 3.
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    UnsupportedVersion(u32),
    /// The file ends before a structure it announces.
    #[error("truncated file: {what} needs {needed} bytes at offset {offset}")]
    Truncated {
        /// Where the missing bytes start.
        offset: u64,
        /// How many were needed.
        needed: u64,
        /// What was being read.
        what: String,
    },
    /// A structure that cannot be right.
    #[error("malformed GGUF at offset {offset}: {what}")]
    Malformed {
        /// Where.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A metadata key the model needs is absent.
    #[error("missing metadata key '{0}'")]
    MissingMetadata(String),
    /// A metadata key has the wrong type.
    #[error("metadata key '{key}' should be {expected}")]
    WrongMetadataType {
        /// The key.
        key: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A tensor the model needs is absent.
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    /// A tensor of a type kvmesh cannot dequantise.
    #[error(
        "tensor '{name}' has ggml type {type_id}, which kvmesh cannot load \
         (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0)"
    )]
    UnsupportedTensorType {
        /// The tensor.
        name: String,
        /// Its ggml type id.
        type_id: u32,
    },
}
