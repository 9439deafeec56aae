//! The ACPI Generic Event Device (`ACPI0013`): one interrupt plus a
//! 32-bit event register that tells the guest's `_EVT` method which events
//! fired.
//!
//! The VMM sets event bits with [`GedEvents::raise`], which also signals the
//! interrupt eventfd (an irqfd on the GED's GSI, edge-triggered). The guest's
//! `_EVT` reads the register, which returns the pending bits and clears
//! them, so an event raised while `_EVT` runs is seen by the next interrupt.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use super::read_register_bytes;
use crate::bus::BusDevice;
use crate::legacy::{check_version, StateError};

/// Version of [`GedState`] this code writes and reads.
pub const GED_STATE_VERSION: u32 = 1;

/// A snapshot of the GED: events the guest has not read yet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GedState {
    /// Format version ([`GED_STATE_VERSION`]).
    pub version: u32,
    /// Pending `GED_*` event bits.
    pub pending: u32,
}

/// Event bit: the PCI hotplug controller has slots to add or remove (the
/// AML then calls `\_SB_.PCI0.PCNT`).
pub const GED_PCI_HOTPLUG: u32 = 1 << 0;
/// Event bit: the power button was pressed (`Notify(\_SB_.PWRB, 0x80)`).
pub const GED_POWER_BUTTON: u32 = 1 << 1;
/// Bytes of the GED register block (one 32-bit event register).
pub const GED_REGISTER_SIZE: u64 = 4;

/// The VMM's handle on the GED: raise events from any thread without
/// touching the bus device itself (which a vCPU thread may hold).
#[derive(Clone)]
pub struct GedEvents {
    pending: Arc<Mutex<u32>>,
    irq: Arc<EventFd>,
}

impl GedEvents {
    /// Marks `events` (a mask of `GED_*` bits) pending and interrupts the
    /// guest. An empty mask does nothing.
    pub fn raise(&self, events: u32) -> std::io::Result<()> {
        if events == 0 {
            return Ok(());
        }
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) |= events;
        self.irq.write(1)
    }

    /// Events the guest has not read yet.
    pub fn pending(&self) -> u32 {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The GED's register block, inserted on the port-I/O bus.
pub struct GedDevice {
    events: GedEvents,
}

impl GedDevice {
    /// A GED that interrupts the guest by signalling `irq`.
    pub fn new(irq: EventFd) -> Self {
        Self {
            events: GedEvents {
                pending: Arc::new(Mutex::new(0)),
                irq: Arc::new(irq),
            },
        }
    }

    /// A handle for raising events.
    pub fn events(&self) -> GedEvents {
        self.events.clone()
    }

    /// Saves the pending events.
    pub fn state(&self) -> GedState {
        GedState {
            version: GED_STATE_VERSION,
            pending: self.events.pending(),
        }
    }

    /// Restores pending events and, if any, interrupts the guest again so
    /// its `_EVT` reads them (the edge it saw before the snapshot is gone).
    pub fn restore_state(&mut self, state: &GedState) -> Result<(), StateError> {
        check_version("ged", state.version, GED_STATE_VERSION)?;
        *self
            .events
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = 0;
        self.events
            .raise(state.pending)
            .map_err(|source| StateError::Io {
                device: "ged",
                source,
            })
    }
}

impl BusDevice for GedDevice {
    /// Returns the pending events and clears the bits the access covered.
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut pending = self
            .events
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let covered = read_register_bytes(0, *pending, offset, data);
        *pending &= !covered;
    }

    /// The register is read-only.
    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ged() -> (GedDevice, GedEvents) {
        let dev = GedDevice::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let events = dev.events();
        (dev, events)
    }

    fn read32(dev: &mut GedDevice) -> u32 {
        let mut d = [0xee; 4];
        dev.read(0, 0, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn raise_interrupts_and_read_clears() {
        let (mut dev, events) = ged();
        assert_eq!(read32(&mut dev), 0);
        events.raise(GED_PCI_HOTPLUG).unwrap();
        events.raise(GED_POWER_BUTTON).unwrap();
        assert_eq!(events.irq.read().unwrap(), 2, "one interrupt per raise");
        assert_eq!(events.pending(), GED_PCI_HOTPLUG | GED_POWER_BUTTON);
        assert_eq!(read32(&mut dev), GED_PCI_HOTPLUG | GED_POWER_BUTTON);
        assert_eq!(read32(&mut dev), 0, "read-to-clear");
        assert_eq!(events.pending(), 0);
    }

    #[test]
    fn empty_raise_does_not_interrupt() {
        let (_dev, events) = ged();
        events.raise(0).unwrap();
        assert!(events.irq.read().is_err(), "no interrupt was signalled");
    }

    #[test]
    fn partial_and_odd_accesses() {
        let (mut dev, events) = ged();
        events.raise(0x0102).unwrap();
        // A byte read of bits 8..15 clears only those.
        let mut b = [0u8; 1];
        dev.read(0, 1, &mut b);
        assert_eq!(b[0], 0x01);
        assert_eq!(events.pending(), 0x02);
        // Reads past the register return zero; writes are ignored.
        let mut d = [0xee; 8];
        dev.read(0, 2, &mut d);
        assert_eq!(d, [0; 8]);
        dev.write(0, 0, &[0xff; 4]);
        dev.read(0, u64::MAX, &mut d);
        assert_eq!(read32(&mut dev), 0x02);
    }

    #[test]
    fn state_round_trip_reinterrupts() {
        let (dev, events) = ged();
        events.raise(GED_POWER_BUTTON).unwrap();
        let json = serde_json::to_string(&dev.state()).unwrap();
        let saved: GedState = serde_json::from_str(&json).unwrap();
        let (mut fresh, fresh_events) = ged();
        fresh.restore_state(&saved).unwrap();
        assert_eq!(fresh_events.irq.read().unwrap(), 1);
        assert_eq!(read32(&mut fresh), GED_POWER_BUTTON);
        // Nothing pending: no interrupt.
        fresh
            .restore_state(&GedState {
                version: GED_STATE_VERSION,
                pending: 0,
            })
            .unwrap();
        assert!(fresh_events.irq.read().is_err());
        assert!(fresh
            .restore_state(&GedState {
                version: 2,
                pending: 0
            })
            .is_err());
    }
}
