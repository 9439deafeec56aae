//! The memory hotplug controller the DSDT's memory devices (`PNP0C80`)
//! talk to: ACPI memory hotplug of ranges the VMM adds to guest RAM.
//!
//! The AML selects one slot, then reads its range and status:
//!
//! | offset | name   | access                                             |
//! |--------|--------|----------------------------------------------------|
//! | `0x00` | `MSEL` | read/write (32 bits): the selected slot            |
//! | `0x04` | `MBLO` | read: base address of the slot, low 32 bits        |
//! | `0x08` | `MBHI` | read: base address, high 32 bits                   |
//! | `0x0c` | `MLLO` | read: length of the slot, low 32 bits              |
//! | `0x10` | `MLHI` | read: length, high 32 bits                         |
//! | `0x14` | `MSTS` | read: flags of the selected slot; write: commands  |
//!
//! `MSTS` read bits: [`MEMORY_ENABLED`] (the slot holds RAM; `_STA`) and
//! [`MEMORY_INSERTING`] (the host added it and the guest was not told yet);
//! writing [`MEMORY_INSERTING`] acknowledges the notification. A selected
//! slot beyond the possible ones reads as zero and ignores commands, so a
//! hostile guest can do no harm. Slots are never removed (ACPI memory
//! hot-remove needs the guest's cooperation that `virtio-mem` gives).

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::{read_register_bytes, written_register_value};
use crate::bus::BusDevice;

/// Offset of `MSEL` (selected slot).
pub const MEMORY_HOTPLUG_MSEL: u64 = 0x00;
/// Offset of `MBLO` (base, low half).
pub const MEMORY_HOTPLUG_MBLO: u64 = 0x04;
/// Offset of `MBHI` (base, high half).
pub const MEMORY_HOTPLUG_MBHI: u64 = 0x08;
/// Offset of `MLLO` (length, low half).
pub const MEMORY_HOTPLUG_MLLO: u64 = 0x0c;
/// Offset of `MLHI` (length, high half).
pub const MEMORY_HOTPLUG_MLHI: u64 = 0x10;
/// Offset of `MSTS` (status / command of the selected slot).
pub const MEMORY_HOTPLUG_MSTS: u64 = 0x14;
/// Bytes of the register block.
pub const MEMORY_HOTPLUG_REGISTER_SIZE: u64 = 0x18;
/// `MSTS` bit: the slot holds RAM.
pub const MEMORY_ENABLED: u32 = 1 << 0;
/// `MSTS` bit: the slot was added (read) / the guest was told (write).
pub const MEMORY_INSERTING: u32 = 1 << 1;
/// GED event bit for memory hotplug: the AML then runs `\_SB_.MHPC.MSCN`.
pub const GED_MEMORY_HOTPLUG: u32 = 1 << 3;

/// One slot: a guest-physical range of hot-added RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySlot {
    /// Guest-physical base address.
    pub base: u64,
    /// Bytes.
    pub len: u64,
    /// The guest has not acknowledged the insertion yet.
    pub inserting: bool,
}

/// Errors from memory hotplug requests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryHotplugError {
    /// Every slot holds RAM already.
    #[error("all {0} memory hotplug slots are in use")]
    NoFreeSlot(usize),
    /// An empty range.
    #[error("a memory slot cannot be empty")]
    Empty,
}

struct Registers {
    selected: u32,
    max: usize,
    slots: Vec<MemorySlot>,
}

impl Registers {
    fn selected(&mut self) -> Option<&mut MemorySlot> {
        let i = usize::try_from(self.selected).ok()?;
        self.slots.get_mut(i)
    }
}

/// The VMM's handle on the controller: adds slots without touching the
/// bus device (a vCPU thread may hold it).
#[derive(Clone)]
pub struct MemoryHotplugState {
    regs: Arc<Mutex<Registers>>,
}

impl MemoryHotplugState {
    /// `max` possible slots, all empty.
    pub fn new(max: usize) -> Self {
        Self {
            regs: Arc::new(Mutex::new(Registers {
                selected: 0,
                max,
                slots: Vec::new(),
            })),
        }
    }

    fn regs(&self) -> MutexGuard<'_, Registers> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills the next slot with `[base, base + len)`; the next scan tells
    /// the guest (device check). Returns the slot index.
    pub fn insert(&self, base: u64, len: u64) -> Result<usize, MemoryHotplugError> {
        if len == 0 {
            return Err(MemoryHotplugError::Empty);
        }
        let mut r = self.regs();
        if r.slots.len() >= r.max {
            return Err(MemoryHotplugError::NoFreeSlot(r.max));
        }
        r.slots.push(MemorySlot {
            base,
            len,
            inserting: true,
        });
        Ok(r.slots.len() - 1)
    }

    /// The filled slots, in order.
    pub fn slots(&self) -> Vec<MemorySlot> {
        self.regs().slots.clone()
    }

    /// Number of possible slots.
    pub fn max_slots(&self) -> usize {
        self.regs().max
    }

    /// Puts back slots saved by [`Self::slots`] (a restore); at most
    /// `max_slots` of them.
    pub fn restore(&self, slots: &[MemorySlot]) -> Result<(), MemoryHotplugError> {
        let mut r = self.regs();
        if slots.len() > r.max {
            return Err(MemoryHotplugError::NoFreeSlot(r.max));
        }
        if slots.iter().any(|s| s.len == 0) {
            return Err(MemoryHotplugError::Empty);
        }
        r.slots = slots.to_vec();
        Ok(())
    }
}

/// The register block on the port-I/O bus.
pub struct MemoryHotplugController {
    state: MemoryHotplugState,
}

impl MemoryHotplugController {
    /// A controller over `state`.
    pub fn new(state: MemoryHotplugState) -> Self {
        Self { state }
    }
}

impl BusDevice for MemoryHotplugController {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut r = self.state.regs();
        let selected = r.selected;
        read_register_bytes(MEMORY_HOTPLUG_MSEL, selected, offset, data);
        let slot = r.selected().copied();
        let (base, len, status) = match slot {
            Some(s) => {
                let mut bits = MEMORY_ENABLED;
                if s.inserting {
                    bits |= MEMORY_INSERTING;
                }
                (s.base, s.len, bits)
            }
            None => (0, 0, 0),
        };
        read_register_bytes(MEMORY_HOTPLUG_MBLO, base as u32, offset, data);
        read_register_bytes(MEMORY_HOTPLUG_MBHI, (base >> 32) as u32, offset, data);
        read_register_bytes(MEMORY_HOTPLUG_MLLO, len as u32, offset, data);
        read_register_bytes(MEMORY_HOTPLUG_MLHI, (len >> 32) as u32, offset, data);
        read_register_bytes(MEMORY_HOTPLUG_MSTS, status, offset, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let mut r = self.state.regs();
        if let Some(slot) = written_register_value(MEMORY_HOTPLUG_MSEL, offset, data) {
            r.selected = slot;
        }
        if let Some(cmd) = written_register_value(MEMORY_HOTPLUG_MSTS, offset, data) {
            if let Some(s) = r.selected() {
                if cmd & MEMORY_INSERTING != 0 {
                    s.inserting = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dev: &mut MemoryHotplugController, offset: u64) -> u32 {
        let mut d = [0xee; 4];
        dev.read(0, offset, &mut d);
        u32::from_le_bytes(d)
    }

    fn select(dev: &mut MemoryHotplugController, slot: u32) {
        dev.write(0, MEMORY_HOTPLUG_MSEL, &slot.to_le_bytes());
    }

    #[test]
    fn inserted_slots_report_range_and_status_until_acknowledged() {
        let state = MemoryHotplugState::new(2);
        let mut dev = MemoryHotplugController::new(state.clone());
        select(&mut dev, 0);
        assert_eq!(read(&mut dev, MEMORY_HOTPLUG_MSTS), 0, "empty slot");
        assert_eq!(state.insert(0x1_2000_0000, 0x3_0000_0000), Ok(0));
        assert_eq!(read(&mut dev, MEMORY_HOTPLUG_MBLO), 0x2000_0000);
        assert_eq!(read(&mut dev, MEMORY_HOTPLUG_MBHI), 1);
        assert_eq!(read(&mut dev, MEMORY_HOTPLUG_MLLO), 0);
        assert_eq!(read(&mut dev, MEMORY_HOTPLUG_MLHI), 3);
        assert_eq!(
            read(&mut dev, MEMORY_HOTPLUG_MSTS),
            MEMORY_ENABLED | MEMORY_INSERTING
        );
        // The AML acknowledges with a byte write.
        dev.write(0, MEMORY_HOTPLUG_MSTS, &[MEMORY_INSERTING as u8]);
        assert_eq!(read(&mut dev, MEMORY_HOTPLUG_MSTS), MEMORY_ENABLED);
        assert_eq!(read(&mut dev, MEMORY_HOTPLUG_MSEL), 0);
        assert_eq!(state.insert(0x2_0000_0000, 1 << 27), Ok(1));
        assert_eq!(
            state.insert(0x3_0000_0000, 1 << 27),
            Err(MemoryHotplugError::NoFreeSlot(2))
        );
        assert_eq!(
            state.insert(0x3_0000_0000, 0),
            Err(MemoryHotplugError::Empty)
        );
        assert_eq!(state.slots().len(), 2);
    }

    #[test]
    fn hostile_guest_selects_and_writes_anywhere() {
        let state = MemoryHotplugState::new(8);
        let mut dev = MemoryHotplugController::new(state.clone());
        state.insert(1 << 32, 1 << 27).unwrap();
        for slot in [1, 7, 8, u32::MAX] {
            select(&mut dev, slot);
            for reg in (0..MEMORY_HOTPLUG_REGISTER_SIZE).step_by(4).skip(1) {
                assert_eq!(read(&mut dev, reg), 0, "slot {slot} reg {reg:#x}");
            }
            dev.write(0, MEMORY_HOTPLUG_MSTS, &u32::MAX.to_le_bytes());
        }
        // Odd sizes and offsets past the block: no panic, zeros.
        let mut wide = [0xaa; 8];
        dev.read(0, MEMORY_HOTPLUG_REGISTER_SIZE - 2, &mut wide);
        dev.read(0, u64::MAX - 1, &mut wide);
        dev.write(0, u64::MAX, &[1, 2, 3]);
        dev.write(0, MEMORY_HOTPLUG_MBLO, &[0xff; 4]);
        assert_eq!(state.slots()[0].base, 1 << 32, "ranges are read-only");
        assert!(state.slots()[0].inserting, "other slots' acks do not leak");
    }

    #[test]
    fn restore_puts_back_the_saved_slots() {
        let state = MemoryHotplugState::new(2);
        state.insert(1 << 32, 1 << 28).unwrap();
        let saved = state.slots();
        let restored = MemoryHotplugState::new(2);
        restored.restore(&saved).unwrap();
        assert_eq!(restored.slots(), saved);
        let three = vec![saved[0]; 3];
        assert!(restored.restore(&three).is_err());
    }
}
