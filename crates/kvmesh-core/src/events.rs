//! KV events: what a block pool tells the rest of the fleet about the blocks it holds.
//!
//! A router's prefix index (kvmesh-index) is built from these alone, so they follow the
//! pool's registry exactly: a block is `Stored` when it becomes reusable under its sequence
//! hash, `Removed` when it stops being reusable (evicted), and `Cleared` drops everything a
//! pool held on one tier. A block deduplicated against an already-registered twin produces no
//! event.
//!
//! The pool gathers the events of each call in a buffer and the caller publishes them
//! afterwards ([`crate::BlockPool::flush_events`]), so no sink runs inside pool operations.
//! Transports add the worker id and a sequence number around them.

use crate::hash::SequenceHash;

/// The storage tier a block lives on. Lower tiers are larger and slower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Tier {
    /// Accelerator memory (or, for the CPU engine, the memory attention reads from).
    #[default]
    Device,
    /// Host (CPU) memory below the device.
    Host,
    /// Local disk.
    Disk,
    /// A remote store shared by workers.
    Remote,
}

impl Tier {
    /// Every tier, fastest first.
    pub const ALL: [Tier; 4] = [Tier::Device, Tier::Host, Tier::Disk, Tier::Remote];

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Device => "device",
            Tier::Host => "host",
            Tier::Disk => "disk",
            Tier::Remote => "remote",
        }
    }
}

/// One change to the set of reusable blocks a pool holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvEvent {
    /// A full block became reusable under `hash`; `parent` is the previous block of its
    /// sequence (`None` for a sequence's first block).
    Stored {
        /// The block's sequence hash.
        hash: SequenceHash,
        /// The sequence hash of the block before it.
        parent: Option<SequenceHash>,
        /// Where it is stored.
        tier: Tier,
    },
    /// The block is no longer held on `tier`.
    Removed {
        /// The block's sequence hash.
        hash: SequenceHash,
        /// Where it was stored.
        tier: Tier,
    },
    /// Every block on `tier` was dropped.
    Cleared {
        /// The tier cleared.
        tier: Tier,
    },
}

/// Receives KV events, batch by batch, in the order they happened.
pub trait KvEventSink {
    /// Takes one batch of events.
    fn publish(&mut self, events: &[KvEvent]);
}

impl KvEventSink for Vec<KvEvent> {
    fn publish(&mut self, events: &[KvEvent]) {
        self.extend_from_slice(events);
    }
}
