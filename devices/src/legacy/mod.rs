//! Legacy PC devices: the 16550A serial port, the i8042 reset line, the CMOS
//! RTC/NVRAM and the ACPI power-management registers.
//!
//! Each device implements [`crate::bus::BusDevice`] and is inserted on the
//! port-I/O bus by the VMM at the addresses in `arch::layout`.

pub mod acpi_pm;
pub mod cmos;
pub mod i8042;
pub mod serial;

pub use acpi_pm::{AcpiPmDevice, AcpiPmTimer};
pub use cmos::Cmos;
pub use i8042::I8042Device;
pub use serial::SerialDevice;

use vmm_sys_util::eventfd::EventFd;

/// Adapts an [`EventFd`] to `vm_superio`'s interrupt/event trait: triggering
/// adds 1 to the eventfd counter, which wakes whoever polls it (KVM irqfd or
/// the VMM's event loop).
struct EventFdTrigger(EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Signals `evt`, logging (not propagating) a failure: a guest action must
/// never be able to turn a full or broken eventfd into a VMM error.
fn signal(evt: &EventFd, what: &str) {
    if let Err(e) = evt.write(1) {
        log::error!("failed to signal {what} event: {e}");
    }
}
