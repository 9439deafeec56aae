//! virtio-blk: the device model, its request parsing and its queue worker.
//!
//! [`VirtioBlock`] serves a [`disk::DiskImage`] to the guest (virtio 1.2
//! §5.2) from one worker thread for all its queues, and keeps
//! [`BlockCounters`] for the VMM's statistics API.

mod device;
pub mod disk;
mod request;
mod state;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};

pub use device::{BlockError, BlockOptions, VirtioBlock, DEFAULT_QUEUE_SIZE};
pub use request::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, SECTOR_SIZE};
pub use state::{BlockState, BLOCK_STATE_VERSION};

/// I/O statistics of one block device, updated by its worker.
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Bytes read from the disk for the guest.
    pub read_bytes: AtomicU64,
    /// Bytes written to the disk by the guest.
    pub write_bytes: AtomicU64,
    /// Completed read requests.
    pub read_ops: AtomicU64,
    /// Completed write requests.
    pub write_ops: AtomicU64,
    /// Flush requests.
    pub flush_ops: AtomicU64,
    /// Completed discard and write-zeroes requests.
    pub discard_ops: AtomicU64,
    /// Requests answered with an error status.
    pub errors: AtomicU64,
}

/// A point-in-time copy of [`BlockCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockCountersSnapshot {
    /// See [`BlockCounters::read_bytes`].
    pub read_bytes: u64,
    /// See [`BlockCounters::write_bytes`].
    pub write_bytes: u64,
    /// See [`BlockCounters::read_ops`].
    pub read_ops: u64,
    /// See [`BlockCounters::write_ops`].
    pub write_ops: u64,
    /// See [`BlockCounters::flush_ops`].
    pub flush_ops: u64,
    /// See [`BlockCounters::discard_ops`].
    pub discard_ops: u64,
    /// See [`BlockCounters::errors`].
    pub errors: u64,
}

impl BlockCounters {
    pub(crate) fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> BlockCountersSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockCountersSnapshot {
            read_bytes: r(&self.read_bytes),
            write_bytes: r(&self.write_bytes),
            read_ops: r(&self.read_ops),
            write_ops: r(&self.write_ops),
            flush_ops: r(&self.flush_ops),
            discard_ops: r(&self.discard_ops),
            errors: r(&self.errors),
        }
    }
}

#[cfg(test)]
mod tests;
