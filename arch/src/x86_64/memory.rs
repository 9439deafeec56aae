//! Guest RAM layout: which guest-physical ranges are backed by RAM, and the
//! e820 memory map the guest kernel is told about.
//!
//! RAM fills guest-physical space from 0 up to the 32-bit MMIO hole; what does
//! not fit below the hole continues at 4 GiB. The e820 map carves the legacy
//! EBDA/BIOS area (which holds the ACPI tables) out of the low RAM as reserved.

use vm_memory::GuestAddress;

use super::layout::{EBDA_START, HIGH_RAM_START, MEM_32BIT_GAP_START, RAM_64BIT_START};

/// Type of an e820 memory map entry (the values are the e820 type codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved; the guest must not use it as RAM (BIOS area, ACPI tables).
    Reserved = 2,
}

/// One entry of the guest memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest-physical byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// Bytes of guest RAM placed below the 32-bit MMIO hole.
fn low_ram_size(ram_size: u64) -> u64 {
    ram_size.min(MEM_32BIT_GAP_START)
}

/// RAM regions for a guest of `ram_size` bytes: below MEM_32BIT_GAP_START,
/// the rest from RAM_64BIT_START.
pub fn ram_regions(ram_size: u64) -> Vec<(GuestAddress, usize)> {
    let mut regions = Vec::with_capacity(2);
    let low = low_ram_size(ram_size);
    if low > 0 {
        regions.push((GuestAddress(0), low as usize));
    }
    let high = ram_size - low;
    if high > 0 {
        regions.push((GuestAddress(RAM_64BIT_START), high as usize));
    }
    regions
}

/// Pushes `[start, end)` as an entry of `kind` unless it is empty.
fn push_range(map: &mut Vec<E820Entry>, start: u64, end: u64, kind: E820Kind) {
    if end > start {
        map.push(E820Entry {
            addr: start,
            size: end - start,
            kind,
        });
    }
}

/// e820 map: RAM [0, EBDA_START), reserved [EBDA_START, HIGH_RAM_START)
/// (holds ACPI at 0xe0000), RAM [HIGH_RAM_START, low end), RAM above 4G if
/// any. Entries are ordered and do not overlap; their sizes add up to
/// `ram_size` (the reserved BIOS area is part of the RAM backing).
pub fn e820_map(ram_size: u64) -> Vec<E820Entry> {
    let low_end = low_ram_size(ram_size);
    let mut map = Vec::with_capacity(4);
    push_range(&mut map, 0, low_end.min(EBDA_START), E820Kind::Ram);
    push_range(
        &mut map,
        EBDA_START,
        low_end.min(HIGH_RAM_START),
        E820Kind::Reserved,
    );
    push_range(&mut map, HIGH_RAM_START, low_end, E820Kind::Ram);
    let high = ram_size - low_end;
    push_range(
        &mut map,
        RAM_64BIT_START,
        RAM_64BIT_START.saturating_add(high),
        E820Kind::Ram,
    );
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn check_map(ram_size: u64) -> Vec<E820Entry> {
        let map = e820_map(ram_size);
        let total: u64 = map.iter().map(|e| e.size).sum();
        assert_eq!(total, ram_size, "sizes must add up for {ram_size:#x}");
        for pair in map.windows(2) {
            assert!(
                pair[0].addr + pair[0].size <= pair[1].addr,
                "overlap or disorder: {pair:?}"
            );
        }
        for e in &map {
            assert!(e.size > 0);
            let end = e.addr + e.size;
            // Nothing may sit in the 32-bit MMIO hole.
            assert!(end <= MEM_32BIT_GAP_START || e.addr >= RAM_64BIT_START);
        }
        // The ACPI area is reserved.
        let acpi = map
            .iter()
            .find(|e| e.addr <= 0xe0000 && 0xe0000 < e.addr + e.size)
            .expect("ACPI area described");
        assert_eq!(acpi.kind, E820Kind::Reserved);
        map
    }

    #[test]
    fn e820_small_guests() {
        for size in [64 * MIB, 128 * MIB] {
            let map = check_map(size);
            assert_eq!(map.len(), 3);
            assert_eq!(map[0].kind, E820Kind::Ram);
            assert_eq!(map[0].size, EBDA_START);
            assert_eq!(map[1].addr, EBDA_START);
            assert_eq!(map[2].addr, HIGH_RAM_START);
            assert_eq!(map[2].addr + map[2].size, size);
        }
    }

    #[test]
    fn e820_just_below_and_above_the_hole() {
        let map = check_map(3 * GIB + GIB / 2);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MEM_32BIT_GAP_START);
        assert_eq!(map[3].addr, RAM_64BIT_START);
        assert_eq!(map[3].size, GIB / 2);

        let map = check_map(6 * GIB);
        assert_eq!(map.len(), 4);
        assert_eq!(map[3].size, 6 * GIB - MEM_32BIT_GAP_START);
        assert_eq!(map[3].kind, E820Kind::Ram);
    }

    #[test]
    fn e820_exactly_the_hole_start_has_no_high_entry() {
        let map = check_map(MEM_32BIT_GAP_START);
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn ram_regions_split_at_the_hole() {
        assert_eq!(
            ram_regions(128 * MIB),
            vec![(GuestAddress(0), (128 * MIB) as usize)]
        );
        assert_eq!(
            ram_regions(6 * GIB),
            vec![
                (GuestAddress(0), MEM_32BIT_GAP_START as usize),
                (
                    GuestAddress(RAM_64BIT_START),
                    (6 * GIB - MEM_32BIT_GAP_START) as usize
                ),
            ]
        );
        let total: usize = ram_regions(5 * GIB).iter().map(|r| r.1).sum();
        assert_eq!(total as u64, 5 * GIB);
        assert!(ram_regions(0).is_empty());
    }
}
