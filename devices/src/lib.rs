//! Emulated platform devices and the buses that route guest accesses to them.
//!
//! Only the legacy parts a guest needs live here (16550 serial, i8042 reset,
//! CMOS RTC, ACPI power management); paravirtual devices are in
//! `virtio-devices`.

pub mod acpi;
pub mod bus;
pub mod legacy;
pub mod pci;
pub mod seccomp;

pub use bus::{Bus, BusDevice, BusError, SharedDevice};
