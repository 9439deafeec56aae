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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// A guest request to stop the VM (power off or reset).
///
/// Raising it sets a flag that every vCPU checks before it re-enters the
/// guest, so the requesting vCPU runs no instruction after the request, and
/// writes an eventfd that wakes the VMM's control loop.
#[derive(Clone)]
pub struct GuestStopEvent {
    evt: Arc<EventFd>,
    raised: Arc<AtomicBool>,
}

impl GuestStopEvent {
    /// Creates an unraised event.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
            raised: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Records the request and wakes the VMM loop; a failed eventfd write is
    /// logged, never propagated to the guest.
    pub fn raise(&self, what: &str) {
        self.raised.store(true, Ordering::Release);
        if let Err(e) = self.evt.write(1) {
            log::error!("failed to signal {what} event: {e}");
        }
    }

    /// Whether the guest has asked for this stop.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// The eventfd the VMM loop polls.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

impl vm_superio::Trigger for GuestStopEvent {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.raise("i8042 reset");
        Ok(())
    }
}

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
