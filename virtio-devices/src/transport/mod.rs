//! virtio transports: how a driver finds and drives a device.
pub mod pci;

pub use pci::{VirtioPciState, VirtioQueueState};
