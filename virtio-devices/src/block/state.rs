//! The saved state of a virtio-blk device (beyond the transport's).

use serde::{Deserialize, Serialize};

/// Version of [`BlockState`] this code writes and reads.
pub const BLOCK_STATE_VERSION: u32 = 1;

/// What a restored block device must match or take over: the features the
/// driver accepted and the shape of the disk and queues the guest saw.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BlockState {
    /// Format version ([`BLOCK_STATE_VERSION`]).
    pub version: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// Disk size in sectors: the image must not have changed size.
    pub capacity: u64,
    /// Number of request queues.
    pub num_queues: u16,
    /// Size of each queue.
    pub queue_size: u16,
    /// Read-only presentation.
    pub readonly: bool,
}
