//! vhost-user-blk: a virtio-blk device whose requests a vhost-user backend
//! (qemu-storage-daemon, SPDK) serves. The config space (capacity, block
//! size, limits) comes from the backend (`GET_CONFIG`).

use std::path::PathBuf;

use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use crate::vhost_user::{
    check_queue_options, VhostUserConnection, VhostUserDevice, VhostUserError, VhostUserSpec,
    DEFAULT_TIMEOUT,
};
use crate::worker::ThreadSetup;

/// Bytes of `struct virtio_blk_config` read from the backend (up to and
/// including the write-zeroes fields).
pub const BLK_CONFIG_LEN: usize = 60;
/// Offset of `num_queues` in the config space.
const NUM_QUEUES_OFFSET: usize = 34;
/// Default queue size.
pub const DEFAULT_QUEUE_SIZE: u16 = 128;

/// What the user configures for one vhost-user-blk device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostUserBlkOptions {
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// Request queues.
    pub num_queues: usize,
    /// Size of each queue.
    pub queue_size: u16,
}

fn allowed_features() -> u64 {
    [
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_GEOMETRY,
        VIRTIO_BLK_F_RO,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
    ]
    .iter()
    .fold(0u64, |a, &b| a | (1u64 << b))
}

/// Connects to the backend, reads its config space and builds the device.
pub fn new_vhost_user_blk(
    opts: &VhostUserBlkOptions,
    setup: Option<ThreadSetup>,
) -> Result<VhostUserDevice, VhostUserError> {
    check_queue_options(opts.num_queues, opts.queue_size)?;
    let mut conn = VhostUserConnection::connect(
        &opts.socket,
        opts.num_queues,
        DEFAULT_TIMEOUT,
        setup.clone(),
    )?;
    let mut config = conn.get_config(BLK_CONFIG_LEN)?;
    config.resize(BLK_CONFIG_LEN, 0);
    let mut features = allowed_features();
    if opts.num_queues > 1 {
        config[NUM_QUEUES_OFFSET..NUM_QUEUES_OFFSET + 2]
            .copy_from_slice(&(opts.num_queues as u16).to_le_bytes());
    } else {
        features &= !(1 << VIRTIO_BLK_F_MQ);
    }
    let spec = VhostUserSpec {
        name: "vhost-user-blk".into(),
        device_type: VIRTIO_ID_BLOCK,
        queue_sizes: vec![opts.queue_size; opts.num_queues],
        features,
        frontend_features: 0,
        config,
        reconnect: true,
    };
    let mut dev = VhostUserDevice::new(spec, conn);
    if let Some(s) = setup {
        dev.set_thread_setup(s);
    }
    Ok(dev)
}

#[cfg(test)]
mod tests;
