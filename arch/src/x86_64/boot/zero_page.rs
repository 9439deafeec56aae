//! Linux 64-bit boot protocol: the `boot_params` "zero page".

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::InitramfsInfo;
use crate::x86_64::error::BootError;
use crate::x86_64::layout::{CMDLINE_START, ZERO_PAGE_START};
use crate::x86_64::memory::e820_map;

/// Magic in `boot_flag`.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS" in `header`.
const HDR_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: an undefined boot loader.
const LOADER_UNDEFINED: u8 = 0xff;
/// Boot protocol version advertised when no bzImage header exists.
const DEFAULT_BOOT_VERSION: u16 = 0x20c;
/// Kernel alignment advertised when no bzImage header exists (2 MiB).
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x20_0000;

/// Narrows an address that the layout keeps below 4 GiB to a header field.
fn low32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Builds and writes the zero page at ZERO_PAGE_START.
pub(super) fn write_zero_page(
    mem: &GuestMemoryMmap,
    bz_header: Option<&setup_header>,
    cmdline_len: usize,
    initramfs: Option<&InitramfsInfo>,
    rsdp: Option<GuestAddress>,
    ram_size: u64,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    match bz_header {
        Some(hdr) => params.hdr = *hdr,
        None => {
            params.hdr.boot_flag = BOOT_FLAG_MAGIC;
            params.hdr.header = HDR_MAGIC;
            params.hdr.version = DEFAULT_BOOT_VERSION;
            params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = low32(CMDLINE_START);
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(u32::MAX);
    if let Some(initrd) = initramfs {
        params.hdr.ramdisk_image = initrd.addr.0 as u32;
        params.ext_ramdisk_image = (initrd.addr.0 >> 32) as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    if let Some(rsdp) = rsdp {
        params.acpi_rsdp_addr = rsdp.0;
    }

    let map = e820_map(ram_size);
    if map.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820Entries(map.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = map.len() as u8;

    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| BootError::GuestWrite {
            what: "zero page",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::boot::test_util::guest_mem;
    use crate::x86_64::boot::{configure_system, BootProtocol, KernelEntry};

    fn kernel(setup_header: Option<setup_header>) -> KernelEntry {
        KernelEntry {
            entry: GuestAddress(0x100_0000),
            protocol: BootProtocol::Linux64,
            kernel_load: GuestAddress(0x100_0000),
            kernel_end: GuestAddress(0x200_0000),
            setup_header,
        }
    }

    #[test]
    fn zero_page_without_bzimage_header() {
        let mem = guest_mem(64 << 20);
        let initrd = InitramfsInfo {
            addr: GuestAddress(0x300_0000),
            size: 0x4321,
        };
        configure_system(
            &mem,
            &kernel(None),
            "console=ttyS0 quiet",
            Some(&initrd),
            Some(GuestAddress(0xe0000)),
            64 << 20,
        )
        .unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 19);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x4321);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries, 3);
        let last = p.e820_table[2];
        assert_eq!({ last.addr }, 0x10_0000);
        assert_eq!({ last.addr } + { last.size }, 64 << 20);
        assert_eq!({ last.r#type }, 1);
        assert_eq!({ p.e820_table[1].r#type }, 2);
    }

    #[test]
    fn zero_page_copies_bzimage_header() {
        let mem = guest_mem(64 << 20);
        let hdr = setup_header {
            header: HDR_MAGIC,
            version: 0x20f,
            setup_sects: 27,
            loadflags: 1,
            type_of_loader: 0,
            ..Default::default()
        };
        configure_system(&mem, &kernel(Some(hdr)), "", None, None, 64 << 20).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!(p.hdr.setup_sects, 27);
        assert_eq!(p.hdr.loadflags, 1);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!({ p.acpi_rsdp_addr }, 0);
        let mut nul = [1u8; 1];
        mem.read_slice(&mut nul, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(nul, [0]);
    }
}
