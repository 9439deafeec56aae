//! Loading an arm64 Linux `Image` (linux-loader's PE/Image loader), the
//! initramfs and the device tree into guest RAM.
//!
//! The kernel goes at the start of RAM (2 MiB aligned) plus the text
//! offset of its header; the initramfs after the kernel's memory footprint
//! (its header's `image_size`, which covers the BSS), 2 MiB aligned; the
//! device tree in the last 2 MiB of RAM.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::pe::{arm64_image_header, PE};
use linux_loader::loader::KernelLoader;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::fdt::{create_fdt, FdtConfig};
use super::layout::{FDT_MAX_SIZE, KERNEL_ALIGN, RAM_START};
use crate::PayloadError;

/// Where the boot vCPU starts: the kernel entry, with x0 at the device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// Guest-physical address of the first kernel instruction.
    pub pc: u64,
    /// Guest-physical address of the device tree blob.
    pub fdt: u64,
}

/// Where the kernel landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelPlacement {
    /// Entry (load) address.
    pub entry: u64,
    /// First byte after the kernel's memory footprint.
    pub end: u64,
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Loads the `Image` at RAM start plus its text offset.
pub fn load_kernel(memory: &GuestMemoryMmap, kernel: &mut File) -> Result<KernelPlacement, String> {
    let mut header = arm64_image_header::default();
    kernel
        .seek(SeekFrom::Start(0))
        .and_then(|_| kernel.read_exact(header.as_mut_slice()))
        .map_err(|e| format!("cannot read the arm64 Image header: {e}"))?;
    let loaded = PE::load(memory, Some(GuestAddress(RAM_START)), kernel, None).map_err(|e| {
        format!("not a loadable arm64 Image (is it an ELF vmlinux or compressed?): {e}")
    })?;
    let footprint = u64::from_le(header.image_size);
    let entry = loaded.kernel_load.0;
    let end = loaded.kernel_end.max(entry.saturating_add(footprint));
    Ok(KernelPlacement { entry, end })
}

/// Loads the initramfs at the first 2 MiB boundary at or after `after`,
/// below `limit`; returns its start and end.
pub fn load_initramfs(
    memory: &GuestMemoryMmap,
    file: &mut File,
    after: u64,
    limit: u64,
) -> Result<(u64, u64), String> {
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("cannot size the initramfs: {e}"))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot read the initramfs: {e}"))?;
    let start = align_up(after, KERNEL_ALIGN).ok_or("the kernel ends past the address space")?;
    let end = start
        .checked_add(size)
        .filter(|&end| end <= limit)
        .ok_or_else(|| {
            format!(
                "{} MiB do not fit in guest RAM after the kernel; give the VM more memory",
                size.div_ceil(1 << 20)
            )
        })?;
    let len = usize::try_from(size).map_err(|_| "initramfs too large".to_string())?;
    memory
        .read_exact_volatile_from(GuestAddress(start), file, len)
        .map_err(|e| format!("cannot load the initramfs into guest RAM: {e}"))?;
    Ok((start, end))
}

/// Loads kernel and initramfs and writes the device tree describing `cfg`
/// (whose `initrd` this fills in); returns the boot vCPU's entry.
pub fn load(
    memory: &GuestMemoryMmap,
    kernel: &mut File,
    initramfs: Option<&mut File>,
    mut cfg: FdtConfig<'_>,
) -> Result<BootEntry, PayloadError> {
    let ram_end = RAM_START + cfg.ram_size;
    let fdt_addr = ram_end
        .checked_sub(FDT_MAX_SIZE)
        .filter(|&a| a >= RAM_START)
        .ok_or_else(|| {
            PayloadError::Firmware("guest RAM is too small for the device tree".into())
        })?;
    let placed = load_kernel(memory, kernel).map_err(PayloadError::Kernel)?;
    if placed.end > fdt_addr {
        return Err(PayloadError::Kernel(
            "the kernel does not fit in guest RAM; give the VM more memory".into(),
        ));
    }
    if let Some(file) = initramfs {
        cfg.initrd = Some(
            load_initramfs(memory, file, placed.end, fdt_addr).map_err(PayloadError::Initramfs)?,
        );
    }
    let blob = create_fdt(&cfg).map_err(|e| PayloadError::Firmware(format!("device tree: {e}")))?;
    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(PayloadError::Firmware(format!(
            "device tree of {} bytes exceeds {FDT_MAX_SIZE}",
            blob.len()
        )));
    }
    memory
        .write_slice(&blob, GuestAddress(fdt_addr))
        .map_err(|e| PayloadError::Firmware(format!("device tree: {e}")))?;
    Ok(BootEntry {
        pc: placed.entry,
        fdt: fdt_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aarch64::fdt::MsiController;
    use std::io::Write;

    fn ram(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_START), size as usize)]).unwrap()
    }

    /// A minimal Image: header with text offset, image size and the magic.
    fn image(text_offset: u64, image_size: u64, body: usize) -> File {
        let mut bytes = vec![0u8; 64 + body];
        bytes[8..16].copy_from_slice(&text_offset.to_le_bytes());
        bytes[16..24].copy_from_slice(&image_size.to_le_bytes());
        bytes[56..60].copy_from_slice(&0x644d_5241u32.to_le_bytes());
        bytes[64] = 0xaa;
        let mut f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        f.write_all(&bytes).unwrap();
        f
    }

    fn file(bytes: &[u8]) -> File {
        let mut f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn kernel_initramfs_and_fdt_land_where_the_protocol_says() {
        let mem = ram(64 << 20);
        let mut kernel = image(0, 5 << 20, 4096);
        let mut initrd = file(b"070701 cpio");
        let cfg = FdtConfig {
            cmdline: "console=ttyAMA0",
            ram_size: 64 << 20,
            vcpus: 1,
            initrd: None,
            msi: MsiController::Its,
        };
        let entry = load(&mem, &mut kernel, Some(&mut initrd), cfg).unwrap();
        assert_eq!(entry.pc, RAM_START);
        assert_eq!(entry.fdt, RAM_START + (62 << 20));
        let b: u8 = mem.read_obj(GuestAddress(RAM_START + 64)).unwrap();
        assert_eq!(b, 0xaa);
        // The initramfs follows the 5 MiB footprint, 2 MiB aligned.
        let mut cpio = [0u8; 6];
        mem.read_slice(&mut cpio, GuestAddress(RAM_START + (6 << 20)))
            .unwrap();
        assert_eq!(&cpio, b"070701");
        let magic: u32 = mem.read_obj(GuestAddress(entry.fdt)).unwrap();
        assert_eq!(u32::from_be(magic), 0xd00d_feed);
    }

    #[test]
    fn text_offset_moves_the_entry() {
        let mem = ram(64 << 20);
        let placed = load_kernel(&mem, &mut image(0x8_0000, 1 << 20, 16)).unwrap();
        assert_eq!(placed.entry, RAM_START + 0x8_0000);
        assert_eq!(placed.end, RAM_START + 0x8_0000 + (1 << 20));
    }

    #[test]
    fn bad_payloads_are_refused_with_a_reason() {
        let mem = ram(16 << 20);
        let err = load_kernel(&mem, &mut file(&[0x7f, b'E', b'L', b'F'])).unwrap_err();
        assert!(err.contains("header"), "{err}");
        let err = load_kernel(&mem, &mut file(&[0u8; 128])).unwrap_err();
        assert!(err.contains("not a loadable arm64 Image"), "{err}");
        let big = vec![0u8; 15 << 20];
        let cfg = FdtConfig {
            cmdline: "",
            ram_size: 16 << 20,
            vcpus: 1,
            initrd: None,
            msi: MsiController::Its,
        };
        let err = load(&mem, &mut image(0, 1 << 20, 16), Some(&mut file(&big)), cfg).unwrap_err();
        assert!(matches!(err, PayloadError::Initramfs(ref m) if m.contains("do not fit")));
    }
}
