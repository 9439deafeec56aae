//! ACPI platform devices of the hardware-reduced machine: the Generic Event
//! Device (GED) that raises ACPI events through one interrupt, and the PCI,
//! CPU and memory hotplug controllers whose registers the DSDT's AML reads and
//! writes.
//!
//! All are small port-I/O register blocks of 32-bit registers; the AML
//! accesses them as `DWordAcc` fields, but any byte-aligned access inside a
//! block is handled (bytes outside a register read as zero, never a panic).

pub mod cpu_hotplug;
pub mod ged;
pub mod memory_hotplug;
pub mod pci_hotplug;

pub use cpu_hotplug::{
    CpuEjectHandler, CpuHotplugController, CpuHotplugError, CpuHotplugState, CpuStatus,
    CPU_HOTPLUG_REGISTER_SIZE, GED_CPU_HOTPLUG,
};
pub use ged::{
    GedDevice, GedEvents, GedState, GED_PCI_HOTPLUG, GED_POWER_BUTTON, GED_REGISTER_SIZE,
};
pub use memory_hotplug::{
    MemoryHotplugController, MemoryHotplugError, MemoryHotplugState, MemorySlot,
    GED_MEMORY_HOTPLUG, MEMORY_HOTPLUG_REGISTER_SIZE,
};
pub use pci_hotplug::{
    EjectHandler, HotplugError, PciHotplugController, PciHotplugSavedState, PciHotplugState,
    PCI_HOTPLUG_B0EJ, PCI_HOTPLUG_PCID, PCI_HOTPLUG_PCIU, PCI_HOTPLUG_REGISTER_SIZE,
};

/// Bytes `[offset, offset + data.len())` of a little-endian `u32` register
/// that starts at offset `reg`; bytes outside the register are left alone.
/// Returns the mask of the register bits the access covered.
fn read_register_bytes(reg: u64, value: u32, offset: u64, data: &mut [u8]) -> u32 {
    let bytes = value.to_le_bytes();
    let mut covered = 0u32;
    for (i, b) in data.iter_mut().enumerate() {
        let Some(at) = offset.checked_add(i as u64) else {
            break;
        };
        if let Some(idx) = at.checked_sub(reg).filter(|&d| d < 4) {
            *b = bytes[idx as usize];
            covered |= 0xff << (8 * idx);
        }
    }
    covered
}

/// The `u32` a write of `data` at `offset` puts into the register at `reg`
/// (bytes the write does not cover are zero), or `None` when the write
/// does not touch the register.
fn written_register_value(reg: u64, offset: u64, data: &[u8]) -> Option<u32> {
    let mut bytes = [0u8; 4];
    let mut touched = false;
    for (i, &v) in data.iter().enumerate() {
        let Some(at) = offset.checked_add(i as u64) else {
            break;
        };
        if let Some(idx) = at.checked_sub(reg).filter(|&d| d < 4) {
            bytes[idx as usize] = v;
            touched = true;
        }
    }
    touched.then(|| u32::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_byte_helpers() {
        let mut d = [0xaa; 4];
        assert_eq!(read_register_bytes(4, 0x4433_2211, 4, &mut d), u32::MAX);
        assert_eq!(d, [0x11, 0x22, 0x33, 0x44]);
        let mut d = [0xaa; 2];
        assert_eq!(read_register_bytes(4, 0x4433_2211, 6, &mut d), 0xffff_0000);
        assert_eq!(d, [0x33, 0x44]);
        // Straddling the register's end: the outside byte is untouched.
        let mut d = [0xaa; 2];
        assert_eq!(read_register_bytes(0, 0x4433_2211, 3, &mut d), 0xff00_0000);
        assert_eq!(d, [0x44, 0xaa]);
        let mut d = [0xaa; 4];
        assert_eq!(read_register_bytes(0, 1, u64::MAX - 1, &mut d), 0);
        assert_eq!(
            written_register_value(8, 8, &[1, 2, 3, 4]),
            Some(0x0403_0201)
        );
        assert_eq!(written_register_value(8, 9, &[0x80]), Some(0x8000));
        assert_eq!(written_register_value(8, 4, &[1, 2, 3, 4]), None);
        assert_eq!(written_register_value(8, u64::MAX, &[1, 2]), None);
    }
}
