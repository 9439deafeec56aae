//! Legacy platform devices: on x86_64 the 16550A serial port, the i8042
//! reset line, the CMOS RTC/NVRAM and the ACPI power-management registers;
//! on aarch64 the PL011 UART, the PL031 RTC and, where the GICv3 has no
//! ITS, a GICv2m-style MSI frame.
//!
//! Each device implements [`crate::bus::BusDevice`] and is inserted on the
//! bus the platform description (`arch::PLATFORM`) names, at its address.

pub mod acpi_pm;
pub mod cmos;
pub mod i8042;
pub mod msi_frame;
pub mod pl011;
pub mod pl031;
pub mod serial;

pub use acpi_pm::{AcpiPmDevice, AcpiPmTimer, AcpiPmTimerState};
pub use cmos::{Cmos, CmosState};
pub use i8042::{I8042Device, I8042State};
pub use msi_frame::MsiFrame;
pub use pl011::{Pl011, Pl011State};
pub use pl031::{Pl031, Pl031State};
pub use serial::{SerialDevice, SerialDeviceState, SerialDeviceState as SerialState};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Why a saved platform-device state could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state was written by an unknown format version.
    #[error("{device}: unknown state version {version}")]
    Version {
        /// Which device.
        device: &'static str,
        /// The version found.
        version: u32,
    },
    /// The state does not fit the device (sizes, values out of range).
    #[error("{device}: invalid state: {reason}")]
    Invalid {
        /// Which device.
        device: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Re-creating the device's host resources failed.
    #[error("{device}: {source}")]
    Io {
        /// Which device.
        device: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Returns an error unless `version` is `expected`.
pub(crate) fn check_version(
    device: &'static str,
    version: u32,
    expected: u32,
) -> Result<(), StateError> {
    if version == expected {
        Ok(())
    } else {
        Err(StateError::Version { device, version })
    }
}

/// A console UART the VMM feeds host input (stdin) into.
pub trait ConsoleInput: Send {
    /// Pushes host input towards the guest; what does not fit is dropped.
    fn enqueue_input(&mut self, bytes: &[u8]);
    /// Free space in the receive FIFO, so callers can avoid dropping input.
    fn input_capacity(&self) -> usize;
}

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
