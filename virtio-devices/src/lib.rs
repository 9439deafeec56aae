//! virtio devices and their transport.
//!
//! `device` is the interface between a device model and its transport;
//! `transport` holds virtio-pci; `worker` the thread that serves a device's
//! queues; each device has its own folder (`block`, `console`, `rng`,
//! `pmem`, `mem`, …); `vhost_user` is the frontend that `fs` (virtio-fs) and
//! `vhost_user_blk` are built on.

pub mod balloon;
pub mod block;
pub mod console;
pub mod device;
pub mod discard;
pub mod fs;
pub mod mem;
pub mod net;
pub mod pmem;
pub mod rate_limiter;
pub mod rng;
pub mod transport;
pub mod vhost_user;
pub mod vhost_user_blk;
pub mod vhost_user_net;
pub mod vsock;
pub mod worker;

pub use device::{
    ActivateError, ActivatedQueue, GuestMemory, PausedQueue, VirtioDevice, VirtioInterrupt,
    VirtioInterruptType,
};
