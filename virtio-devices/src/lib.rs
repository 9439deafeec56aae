//! virtio devices and their transport.
//!
//! `device` is the interface between a device model and its transport;
//! `transport` holds virtio-pci; `worker` the thread that serves a device's
//! queues; each device has its own folder (`block`, `console`, `rng`).

pub mod balloon;
pub mod block;
pub mod console;
pub mod device;
pub mod discard;
pub mod net;
pub mod rate_limiter;
pub mod rng;
pub mod transport;
pub mod vsock;
pub mod worker;

pub use device::{
    ActivateError, ActivatedQueue, GuestMemory, PausedQueue, VirtioDevice, VirtioInterrupt,
    VirtioInterruptType,
};
