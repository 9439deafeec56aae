//! virtio-blk: the device model, its request parsing and its queue worker.
pub mod disk;
