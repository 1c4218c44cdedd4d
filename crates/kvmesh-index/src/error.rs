//! Errors of kvmesh-index.

use thiserror::Error;

/// Settings that cannot build an index or a selector.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum IndexConfigError {
    /// The approximate index needs a positive time-to-live.
    #[error("the approximate index's TTL must be positive")]
    ZeroTtl,
    /// The approximate index needs room for at least one entry.
    #[error("the approximate index's capacity must be at least 1 entry")]
    ZeroCapacity,
    /// A weight or temperature is negative or not finite.
    #[error("{name} must be a finite number >= 0, got {value}")]
    InvalidWeight {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A policy name that is not known.
    #[error(
        "unknown routing policy '{0}': use kv, round-robin, random, least-loaded or cache-only"
    )]
    UnknownPolicy(String),
}
