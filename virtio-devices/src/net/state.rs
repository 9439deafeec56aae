//! The saved state of a virtio-net device (beyond the transport's), and
//! what a paused device keeps from its worker.

use serde::{Deserialize, Serialize};

/// Version of [`NetState`] this code writes and reads.
pub const NET_STATE_VERSION: u32 = 1;

/// What a restored net device must match or take over.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NetState {
    /// Format version ([`NET_STATE_VERSION`]).
    pub version: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// The MAC the guest knows (taken over by the restored device).
    pub mac: [u8; 6],
    /// Total RX+TX queues.
    pub num_queues: u16,
    /// Size of each queue.
    pub queue_size: u16,
    /// Queue pairs the driver enabled through the control queue.
    pub active_pairs: u16,
}

/// Worker state a paused device keeps until it is resumed: the pairs in
/// use and, per pair, a frame read from the tap but not yet delivered.
#[derive(Default)]
pub(super) struct NetResume {
    pub active_pairs: u16,
    pub pending: Vec<Option<Vec<u8>>>,
}
