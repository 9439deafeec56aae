//! PVH boot information: `hvm_start_info`, its module list (the initramfs)
//! and its memory map, at the fixed addresses of the layout.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::InitramfsInfo;
use crate::x86_64::error::BootError;
use crate::x86_64::layout::{
    CMDLINE_START, MEMMAP_MAX_ENTRIES, MEMMAP_START, MODLIST_START, PVH_INFO_START,
};
use crate::x86_64::memory::e820_map;

/// `hvm_start_info` version we write (version 1 has the memory map fields).
const START_INFO_VERSION: u32 = 1;

/// Maps a guest-memory write failure of `what` into a `BootError`.
fn write_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> BootError {
    move |source| BootError::GuestWrite { what, source }
}

/// Writes `hvm_start_info` at PVH_INFO_START, the initramfs module entry at
/// MODLIST_START and the e820 map at MEMMAP_START.
pub(super) fn write_start_info(
    mem: &GuestMemoryMmap,
    initramfs: Option<&InitramfsInfo>,
    rsdp: Option<GuestAddress>,
    ram_size: u64,
) -> Result<(), BootError> {
    let map = e820_map(ram_size);
    if map.len() > MEMMAP_MAX_ENTRIES {
        return Err(BootError::TooManyE820Entries(map.len()));
    }
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    let mut addr = GuestAddress(MEMMAP_START);
    for e in &map {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        mem.write_obj(entry, addr)
            .map_err(write_err("PVH memory map"))?;
        addr = GuestAddress(addr.0 + entry_size);
    }

    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp.map_or(0, |a| a.0),
        memmap_paddr: MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = initramfs {
        let module = hvm_modlist_entry {
            paddr: initrd.addr.0,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(MODLIST_START))
            .map_err(write_err("PVH module list"))?;
        info.nr_modules = 1;
        info.modlist_paddr = MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(write_err("PVH start info"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::boot::test_util::guest_mem;
    use crate::x86_64::boot::{configure_system, BootProtocol, KernelEntry};
    use crate::x86_64::memory::E820Kind;

    #[test]
    fn start_info_contents() {
        let mem = guest_mem(128 << 20);
        let kernel = KernelEntry {
            entry: GuestAddress(0x100_0680),
            protocol: BootProtocol::Pvh,
            kernel_load: GuestAddress(0x100_0000),
            kernel_end: GuestAddress(0x200_0000),
            setup_header: None,
        };
        let initrd = InitramfsInfo {
            addr: GuestAddress(0x700_0000),
            size: 0x1234,
        };
        configure_system(
            &mem,
            &kernel,
            "console=ttyS0",
            Some(&initrd),
            Some(GuestAddress(0xe0000)),
            128 << 20,
        )
        .unwrap();

        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.rsdp_paddr, 0xe0000);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, MODLIST_START);
        assert_eq!(info.memmap_paddr, MEMMAP_START);
        assert_eq!(info.memmap_entries, 3);

        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(MODLIST_START)).unwrap();
        assert_eq!(module.paddr, 0x700_0000);
        assert_eq!(module.size, 0x1234);

        let map = e820_map(128 << 20);
        for (i, want) in map.iter().enumerate() {
            let got: hvm_memmap_table_entry = mem
                .read_obj(GuestAddress(MEMMAP_START + 24 * i as u64))
                .unwrap();
            assert_eq!(got.addr, want.addr);
            assert_eq!(got.size, want.size);
            assert_eq!(got.type_, want.kind as u32);
        }
        let reserved: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(MEMMAP_START + 24)).unwrap();
        assert_eq!(reserved.type_, E820Kind::Reserved as u32);
    }

    #[test]
    fn start_info_without_initramfs_or_rsdp() {
        let mem = guest_mem(64 << 20);
        write_start_info(&mem, None, None, 6 << 30).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.nr_modules, 0);
        assert_eq!(info.modlist_paddr, 0);
        assert_eq!(info.rsdp_paddr, 0);
        assert_eq!(info.memmap_entries, 4);
    }
}
