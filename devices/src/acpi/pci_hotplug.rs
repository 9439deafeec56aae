//! The PCI hotplug controller the DSDT's AML talks to (ACPI-based hotplug
//! of bus 0, in the style of QEMU's and Cloud Hypervisor's `acpi-pcihp`).
//!
//! Three 32-bit registers, one bit per slot (slot 0, the host bridge, is
//! never hotpluggable):
//!
//! | offset | name   | access                                            |
//! |--------|--------|---------------------------------------------------|
//! | `0x0`  | `PCIU` | read-to-clear: slots that received a device       |
//! | `0x4`  | `PCID` | read-to-clear: slots the host asks to eject       |
//! | `0x8`  | `B0EJ` | write: the guest ejects these slots (reads 0)     |
//!
//! The AML's `PCNT` reads `PCIU`/`PCID` and notifies the slot devices
//! (device check / eject request); the slot's `_EJ0` writes its bit to
//! `B0EJ` once the guest let go of the device. Only slots the host asked to
//! eject are ejected: other `B0EJ` bits (a guest ejecting a device on its
//! own) are ignored, so the VMM's configuration stays the source of truth.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{read_register_bytes, written_register_value};
use crate::bus::BusDevice;
use crate::legacy::{check_version, StateError};

/// Version of [`PciHotplugSavedState`] this code writes and reads.
pub const PCI_HOTPLUG_STATE_VERSION: u32 = 1;

/// A snapshot of the hotplug registers: slots added and slots to remove
/// that the guest has not read yet, and ejects the host is waiting for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PciHotplugSavedState {
    /// Format version ([`PCI_HOTPLUG_STATE_VERSION`]).
    pub version: u32,
    /// Pending `PCIU` bits.
    pub up: u32,
    /// Pending `PCID` bits.
    pub down: u32,
    /// Slots asked to eject and not ejected yet.
    pub eject_requested: u32,
}

/// Offset of `PCIU` (slots added).
pub const PCI_HOTPLUG_PCIU: u64 = 0x0;
/// Offset of `PCID` (slots to remove).
pub const PCI_HOTPLUG_PCID: u64 = 0x4;
/// Offset of `B0EJ` (eject, written by the guest).
pub const PCI_HOTPLUG_B0EJ: u64 = 0x8;
/// Bytes of the register block.
pub const PCI_HOTPLUG_REGISTER_SIZE: u64 = 0xc;
/// Slots that can be hotplugged: 1..=31.
const HOTPLUG_SLOTS: u32 = !1;

/// Errors from hotplug requests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HotplugError {
    /// Slot 0 (the host bridge) and slots above 31 cannot be hotplugged.
    #[error("PCI slot {0} is not hotpluggable")]
    InvalidSlot(u8),
}

#[derive(Default)]
struct Registers {
    up: u32,
    down: u32,
    /// Slots the host asked to eject and the guest has not ejected yet.
    eject_requested: u32,
}

/// Called on the vCPU thread that wrote `B0EJ`, once per ejected slot: the
/// VMM stops the device and takes it off the bus.
pub type EjectHandler = Box<dyn FnMut(u8) + Send>;

/// The VMM's handle on the controller's registers: marks slots added or to
/// remove without touching the bus device (which a vCPU thread may hold
/// while it runs the eject handler).
#[derive(Clone, Default)]
pub struct PciHotplugState {
    regs: Arc<Mutex<Registers>>,
}

fn slot_bit(slot: u8) -> Result<u32, HotplugError> {
    1u32.checked_shl(u32::from(slot))
        .filter(|b| b & HOTPLUG_SLOTS != 0)
        .ok_or(HotplugError::InvalidSlot(slot))
}

impl PciHotplugState {
    /// Empty registers.
    pub fn new() -> Self {
        Self::default()
    }

    fn regs(&self) -> std::sync::MutexGuard<'_, Registers> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A device was plugged into `slot`: the next `PCIU` read reports it.
    pub fn slot_added(&self, slot: u8) -> Result<(), HotplugError> {
        let bit = slot_bit(slot)?;
        let mut r = self.regs();
        r.up |= bit;
        // A slot refilled after an eject is no longer being removed.
        r.eject_requested &= !bit;
        r.down &= !bit;
        Ok(())
    }

    /// Asks the guest to release the device in `slot` (reported by the next
    /// `PCID` read); its eject is then honoured.
    pub fn request_eject(&self, slot: u8) -> Result<(), HotplugError> {
        let bit = slot_bit(slot)?;
        let mut r = self.regs();
        r.down |= bit;
        r.eject_requested |= bit;
        Ok(())
    }

    /// Whether the host asked to eject `slot` and the guest has not yet.
    pub fn eject_pending(&self, slot: u8) -> bool {
        slot_bit(slot).is_ok_and(|b| self.regs().eject_requested & b != 0)
    }

    /// Saves the pending bits.
    pub fn state(&self) -> PciHotplugSavedState {
        let r = self.regs();
        PciHotplugSavedState {
            version: PCI_HOTPLUG_STATE_VERSION,
            up: r.up,
            down: r.down,
            eject_requested: r.eject_requested,
        }
    }

    /// Restores pending bits saved by [`Self::state`] (bits of slots that
    /// cannot be hotplugged are refused). Nothing changes on error.
    pub fn restore_state(&self, state: &PciHotplugSavedState) -> Result<(), StateError> {
        check_version("pci-hotplug", state.version, PCI_HOTPLUG_STATE_VERSION)?;
        if (state.up | state.down | state.eject_requested) & !HOTPLUG_SLOTS != 0 {
            return Err(StateError::Invalid {
                device: "pci-hotplug",
                reason: "slot 0 is not hotpluggable".into(),
            });
        }
        let mut r = self.regs();
        r.up = state.up;
        r.down = state.down;
        r.eject_requested = state.eject_requested;
        Ok(())
    }

    /// The eject requests among `slots` (a `B0EJ` value), now cleared.
    fn take_ejects(&self, slots: u32) -> u32 {
        let mut r = self.regs();
        let ejected = slots & r.eject_requested;
        r.eject_requested &= !ejected;
        ejected
    }
}

/// The register block on the port-I/O bus.
pub struct PciHotplugController {
    state: PciHotplugState,
    on_eject: EjectHandler,
}

impl PciHotplugController {
    /// A controller over `state` that calls `on_eject` for every slot the
    /// guest ejects after the host asked it to.
    pub fn new(state: PciHotplugState, on_eject: EjectHandler) -> Self {
        Self { state, on_eject }
    }

    /// Saves the registers (same as the shared [`PciHotplugState`]'s).
    pub fn state(&self) -> PciHotplugSavedState {
        self.state.state()
    }

    /// Restores the registers; see [`PciHotplugState::restore_state`].
    pub fn restore_state(&mut self, state: &PciHotplugSavedState) -> Result<(), StateError> {
        self.state.restore_state(state)
    }
}

impl BusDevice for PciHotplugController {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut r = self.state.regs();
        let up = read_register_bytes(PCI_HOTPLUG_PCIU, r.up, offset, data);
        r.up &= !up;
        let down = read_register_bytes(PCI_HOTPLUG_PCID, r.down, offset, data);
        r.down &= !down;
        // B0EJ reads as zero (data was zero-filled).
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(slots) = written_register_value(PCI_HOTPLUG_B0EJ, offset, data) else {
            return;
        };
        // The registers are unlocked here: the handler may take other locks.
        let ejected = self.state.take_ejects(slots);
        if ejected != slots {
            log::debug!(
                "PCI hotplug: guest ejects slots {:#x} nobody asked to remove; ignored",
                slots & !ejected
            );
        }
        for slot in 0..32u8 {
            if ejected & (1 << slot) != 0 {
                (self.on_eject)(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (PciHotplugController, PciHotplugState, Arc<Mutex<Vec<u8>>>) {
        let state = PciHotplugState::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let dev = PciHotplugController::new(
            state.clone(),
            Box::new(move |slot| s.lock().unwrap().push(slot)),
        );
        (dev, state, seen)
    }

    fn read32(dev: &mut PciHotplugController, off: u64) -> u32 {
        let mut d = [0xee; 4];
        dev.read(0, off, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn added_slots_are_read_once() {
        let (mut dev, state, _) = controller();
        state.slot_added(3).unwrap();
        state.slot_added(31).unwrap();
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_PCIU), (1 << 3) | (1 << 31));
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_PCIU), 0);
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_PCID), 0);
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_B0EJ), 0);
    }

    #[test]
    fn invalid_slots_are_refused() {
        let state = PciHotplugState::new();
        for slot in [0, 32, 255] {
            assert_eq!(state.slot_added(slot), Err(HotplugError::InvalidSlot(slot)));
            assert_eq!(
                state.request_eject(slot),
                Err(HotplugError::InvalidSlot(slot))
            );
            assert!(!state.eject_pending(slot));
        }
    }

    #[test]
    fn only_requested_ejects_reach_the_handler() {
        let (mut dev, state, seen) = controller();
        state.request_eject(4).unwrap();
        state.request_eject(6).unwrap();
        assert!(state.eject_pending(4));
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_PCID), (1 << 4) | (1 << 6));
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_PCID), 0, "read-to-clear");
        // The guest ejects slot 4 and, uninvited, slots 0 and 5.
        dev.write(
            0,
            PCI_HOTPLUG_B0EJ,
            &((1u32 << 4) | (1 << 5) | 1).to_le_bytes(),
        );
        assert_eq!(*seen.lock().unwrap(), vec![4]);
        assert!(!state.eject_pending(4));
        assert!(state.eject_pending(6));
        // Ejecting 4 again does nothing; a byte write of slot 6's bit works.
        dev.write(0, PCI_HOTPLUG_B0EJ, &(1u32 << 4).to_le_bytes());
        dev.write(0, PCI_HOTPLUG_B0EJ, &[1 << 6]);
        assert_eq!(*seen.lock().unwrap(), vec![4, 6]);
    }

    #[test]
    fn writes_elsewhere_and_odd_accesses_are_harmless() {
        let (mut dev, state, seen) = controller();
        state.request_eject(2).unwrap();
        dev.write(0, PCI_HOTPLUG_PCIU, &u32::MAX.to_le_bytes());
        dev.write(0, PCI_HOTPLUG_PCID, &u32::MAX.to_le_bytes());
        dev.write(0, u64::MAX, &[0xff; 4]);
        let mut d = [0u8; 16];
        dev.read(0, u64::MAX - 3, &mut d);
        dev.read(0, 0x100, &mut d);
        assert!(seen.lock().unwrap().is_empty());
        assert!(state.eject_pending(2));
        // A straddling write covering only B0EJ's low byte ejects slot 2.
        dev.write(0, PCI_HOTPLUG_PCID + 3, &[0, 1 << 2]);
        assert_eq!(*seen.lock().unwrap(), vec![2]);
    }

    #[test]
    fn refilling_a_slot_cancels_its_eject() {
        let (mut dev, state, seen) = controller();
        state.request_eject(7).unwrap();
        state.slot_added(7).unwrap();
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_PCID), 0);
        dev.write(0, PCI_HOTPLUG_B0EJ, &(1u32 << 7).to_le_bytes());
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn state_round_trip() {
        let (mut dev, state, seen) = controller();
        state.slot_added(3).unwrap();
        state.request_eject(5).unwrap();
        let json = serde_json::to_string(&dev.state()).unwrap();
        let saved: PciHotplugSavedState = serde_json::from_str(&json).unwrap();
        let (mut fresh, fresh_state, fresh_seen) = controller();
        fresh.restore_state(&saved).unwrap();
        assert_eq!(read32(&mut fresh, PCI_HOTPLUG_PCIU), 1 << 3);
        assert_eq!(read32(&mut fresh, PCI_HOTPLUG_PCID), 1 << 5);
        fresh.write(0, PCI_HOTPLUG_B0EJ, &(1u32 << 5).to_le_bytes());
        assert_eq!(*fresh_seen.lock().unwrap(), vec![5]);
        assert!(!fresh_state.eject_pending(5));
        let mut bad = saved.clone();
        bad.up = 1;
        assert!(dev.restore_state(&bad).is_err());
        bad = saved;
        bad.version = 3;
        assert!(dev.restore_state(&bad).is_err());
        assert_eq!(read32(&mut dev, PCI_HOTPLUG_PCIU), 1 << 3, "unchanged");
        assert!(seen.lock().unwrap().is_empty());
    }
}
