//! kvmesh-tier: storage for KV blocks below the engine's pool.
//!
//! This is the foundation of tiered offload (issue: host, disk and remote tiers): the
//! verified block [`record`] format and the [`Storage`] trait with two backends, host memory
//! ([`HostStore`]) and disk ([`DiskStore`]), which pass one test suite
//! (`tests/storage_suite.rs`). Not built yet: the remote tier, the offload/onboard engine
//! and its scheduler integration; nothing in the engine or server uses this crate so far.
//!
//! The rule every user of this crate follows: bytes from a store are untrusted. A block
//! enters a pool only after [`record::decode`] verified its namespace, hash, token ids,
//! length and checksums against the request; anything else is a miss and is recomputed.
//!
//! ```
//! use kvmesh_core::SequenceHash;
//! use kvmesh_tier::record::{self, Expected, Namespace};
//! use kvmesh_tier::{HostStore, Storage};
//!
//! let ns = Namespace::from_u128(7);
//! let hash = SequenceHash::from_u128(42);
//! let tokens = [1, 2, 3, 4];
//! let mut host = HostStore::new(1 << 20);
//! host.put(hash, &record::encode(ns, hash, None, &tokens, &[0u8; 64]))?;
//!
//! let bytes = host.get(hash)?.expect("stored");
//! let want = Expected { namespace: ns, hash, tokens: &tokens, payload_len: 64 };
//! assert_eq!(record::decode(&bytes, &want).unwrap().payload.len(), 64);
//! # Ok::<(), kvmesh_tier::StorageError>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod disk;
mod host;
mod lru;
pub mod record;
mod storage;

pub use disk::{DiskStore, OpenReport};
pub use host::HostStore;
pub use storage::{PutOutcome, Storage, StorageError};
