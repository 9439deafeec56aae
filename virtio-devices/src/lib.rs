//! virtio devices and their transport.
//!
//! `device` is the interface between a device model and its transport;
//! `transport` holds virtio-pci; each device has its own folder.

pub mod device;

pub use device::{
    ActivateError, ActivatedQueue, GuestMemory, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
};
