//! Kernel and initramfs loading: detects an ELF vmlinux or a bzImage, checks
//! that it fits in guest RAM, and loads it with linux-loader.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::{BootProtocol, InitramfsInfo, KernelEntry};
use crate::x86_64::error::BootError;
use crate::x86_64::layout::HIGH_RAM_START;

/// ELF identification magic.
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// `ELFCLASS64` in `e_ident[EI_CLASS]`.
const ELF_CLASS64: u8 = 2;
/// Size of an ELF64 file header.
const ELF64_EHDR_SIZE: usize = 64;
/// Size of an ELF64 program header.
const ELF64_PHDR_SIZE: u64 = 56;
/// Program header type of a loadable segment.
const PT_LOAD: u32 = 1;
/// Offset of the setup header inside a bzImage.
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// "HdrS", the setup header magic.
const SETUP_HEADER_MAGIC: u32 = 0x5372_6448;
/// First boot protocol version with the 64-bit entry point (`xloadflags`).
const MIN_64BIT_BOOT_VERSION: u16 = 0x20c;
/// `xloadflags` bit: the kernel has the 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
/// `loadflags` bit: the protected-mode code is loaded at 1 MiB or above.
const LOADED_HIGH: u8 = 1;
/// Offset of `startup_64` from the protected-mode code start of a bzImage.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Guest page size used to align the initramfs.
const PAGE_SIZE: u64 = 0x1000;

/// End (exclusive) of the RAM region starting at guest address 0.
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.find_region(GuestAddress(0))
        .map(|r| r.start_addr().0.saturating_add(r.len()))
        .unwrap_or(0)
}

/// Fails unless `[start, end)` lies within `[HIGH_RAM_START, ram_end)`.
fn check_fits(start: u64, end: u64, ram_end: u64) -> Result<(), BootError> {
    if start < HIGH_RAM_START || end > ram_end || end < start {
        return Err(BootError::KernelDoesNotFit {
            start,
            end,
            ram_end,
        });
    }
    Ok(())
}

/// Reads a little-endian integer field of `N` bytes at `off` of `buf`.
fn le_field<const N: usize>(buf: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = buf.get(off..off + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Loads the kernel in `kernel` (ELF vmlinux or bzImage) into `mem`.
///
/// An ELF with a PVH note is entered through PVH; an ELF without it, or a
/// bzImage, through the Linux 64-bit boot protocol.
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<KernelEntry, BootError> {
    let len = kernel
        .seek(SeekFrom::End(0))
        .map_err(BootError::KernelRead)?;
    if len == 0 {
        return Err(BootError::EmptyKernel);
    }
    let mut magic = [0u8; 4];
    if len >= 4 {
        kernel
            .read_exact_at(&mut magic, 0)
            .map_err(BootError::KernelRead)?;
        if magic == ELF_MAGIC {
            return load_elf(mem, kernel);
        }
    }
    let mut hdr = setup_header::default();
    if len >= SETUP_HEADER_OFFSET + hdr.as_slice().len() as u64 {
        kernel
            .read_exact_at(hdr.as_mut_slice(), SETUP_HEADER_OFFSET)
            .map_err(BootError::KernelRead)?;
        if { hdr.header } == SETUP_HEADER_MAGIC {
            return load_bzimage(mem, kernel, &hdr, len);
        }
    }
    Err(BootError::UnknownKernelFormat)
}

/// Computes the guest-physical span `[start, end)` of the PT_LOAD segments.
fn elf_load_span(kernel: &File) -> Result<(u64, u64), BootError> {
    let mut ehdr = [0u8; ELF64_EHDR_SIZE];
    kernel
        .read_exact_at(&mut ehdr, 0)
        .map_err(|_| BootError::BadElf("truncated ELF header"))?;
    if ehdr[4] != ELF_CLASS64 {
        return Err(BootError::BadElf("not a 64-bit ELF"));
    }
    let phoff = u64::from_le_bytes(le_field(&ehdr, 0x20));
    let phentsize = u16::from_le_bytes(le_field(&ehdr, 0x36));
    let phnum = u16::from_le_bytes(le_field(&ehdr, 0x38));
    if u64::from(phentsize) != ELF64_PHDR_SIZE {
        return Err(BootError::BadElf("unexpected program header size"));
    }
    let mut span: Option<(u64, u64)> = None;
    for i in 0..u64::from(phnum) {
        let off = i
            .checked_mul(ELF64_PHDR_SIZE)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(BootError::BadElf("program header offset overflows"))?;
        let mut phdr = [0u8; ELF64_PHDR_SIZE as usize];
        kernel
            .read_exact_at(&mut phdr, off)
            .map_err(|_| BootError::BadElf("truncated program header table"))?;
        let p_type = u32::from_le_bytes(le_field(&phdr, 0));
        let paddr = u64::from_le_bytes(le_field(&phdr, 0x18));
        let filesz = u64::from_le_bytes(le_field(&phdr, 0x20));
        let memsz = u64::from_le_bytes(le_field(&phdr, 0x28));
        if p_type != PT_LOAD || filesz.max(memsz) == 0 {
            continue;
        }
        let end = paddr
            .checked_add(filesz.max(memsz))
            .ok_or(BootError::BadElf("segment end overflows"))?;
        span = Some(match span {
            None => (paddr, end),
            Some((s, e)) => (s.min(paddr), e.max(end)),
        });
    }
    span.ok_or(BootError::BadElf("no loadable segment"))
}

/// Loads an ELF vmlinux at its physical addresses.
fn load_elf(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<KernelEntry, BootError> {
    let (start, end) = elf_load_span(kernel)?;
    check_fits(start, end, low_ram_end(mem))?;
    let res = Elf::load(mem, None, kernel, Some(GuestAddress(HIGH_RAM_START)))
        .map_err(BootError::ElfLoad)?;
    let (entry, protocol) = match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => (addr, BootProtocol::Pvh),
        _ => (res.kernel_load, BootProtocol::Linux64),
    };
    Ok(KernelEntry {
        entry,
        protocol,
        kernel_load: GuestAddress(start),
        kernel_end: GuestAddress(res.kernel_end.max(end)),
        setup_header: None,
    })
}

/// Loads a bzImage's protected-mode code at `code32_start`.
fn load_bzimage(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    hdr: &setup_header,
    file_len: u64,
) -> Result<KernelEntry, BootError> {
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    if version < MIN_64BIT_BOOT_VERSION || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::BzImageNot64Bit {
            version,
            xloadflags,
        });
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(BootError::BadBzImage("not loaded high (LOADED_HIGH clear)"));
    }
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    let payload = file_len
        .checked_sub(setup_size)
        .filter(|p| *p > 0)
        .ok_or(BootError::BadBzImage("shorter than its setup sectors"))?;
    let start = u64::from(hdr.code32_start);
    let needed = payload.max(u64::from(hdr.init_size));
    check_fits(start, start.saturating_add(needed), low_ram_end(mem))?;
    let res = BzImage::load(mem, None, kernel, Some(GuestAddress(HIGH_RAM_START)))
        .map_err(BootError::BzImageLoad)?;
    let entry = res
        .kernel_load
        .0
        .checked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
        .ok_or(BootError::BadBzImage("entry point overflows"))?;
    Ok(KernelEntry {
        entry: GuestAddress(entry),
        protocol: BootProtocol::Linux64,
        kernel_load: res.kernel_load,
        kernel_end: GuestAddress(res.kernel_end.max(start.saturating_add(needed))),
        setup_header: res.setup_header,
    })
}

/// Loads an initramfs page-aligned as high as possible in low RAM (above
/// HIGH_RAM_START). Prefer [`load_initramfs_above`] with the kernel's end so
/// the two can never overlap.
pub fn load_initramfs(mem: &GuestMemoryMmap, file: &mut File) -> Result<InitramfsInfo, BootError> {
    load_initramfs_above(mem, file, GuestAddress(HIGH_RAM_START))
}

/// Loads an initramfs page-aligned as high as possible in low RAM, but not
/// below `lowest` (pass the kernel's `kernel_end`).
pub fn load_initramfs_above(
    mem: &GuestMemoryMmap,
    file: &mut File,
    lowest: GuestAddress,
) -> Result<InitramfsInfo, BootError> {
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(BootError::InitramfsRead)?;
    let ram_end = low_ram_end(mem).min(u64::from(u32::MAX) + 1);
    let lowest = lowest
        .0
        .max(HIGH_RAM_START)
        .checked_next_multiple_of(PAGE_SIZE)
        .unwrap_or(u64::MAX);
    let too_large = || BootError::InitramfsTooLarge {
        size,
        available: ram_end.saturating_sub(lowest),
        lowest,
    };
    let addr = ram_end.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < lowest {
        return Err(too_large());
    }
    file.seek(SeekFrom::Start(0))
        .map_err(BootError::InitramfsRead)?;
    let count = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, count)
        .map_err(|source| BootError::GuestWrite {
            what: "initramfs",
            source,
        })?;
    Ok(InitramfsInfo {
        addr: GuestAddress(addr),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::boot::test_util::{guest_mem, TempFile};

    const LOAD_ADDR: u64 = 0x20_0000;
    const PVH_ENTRY: u32 = 0x20_0040;

    fn put(buf: &mut Vec<u8>, off: usize, bytes: &[u8]) {
        if buf.len() < off + bytes.len() {
            buf.resize(off + bytes.len(), 0);
        }
        buf[off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// A minimal ELF64 with one PT_LOAD at 0x200000 and optionally a PVH note.
    fn build_elf(pvh_note: bool) -> Vec<u8> {
        let phnum: u16 = if pvh_note { 2 } else { 1 };
        let mut f = vec![0u8; 0x1000];
        put(&mut f, 0, &ELF_MAGIC);
        f[4] = ELF_CLASS64;
        f[5] = 1; // little endian
        f[6] = 1; // version
        put(&mut f, 0x10, &2u16.to_le_bytes()); // ET_EXEC
        put(&mut f, 0x12, &0x3eu16.to_le_bytes()); // EM_X86_64
        put(&mut f, 0x14, &1u32.to_le_bytes());
        put(&mut f, 0x18, &LOAD_ADDR.to_le_bytes()); // e_entry
        put(&mut f, 0x20, &64u64.to_le_bytes()); // e_phoff
        put(&mut f, 0x34, &64u16.to_le_bytes()); // e_ehsize
        put(&mut f, 0x36, &56u16.to_le_bytes()); // e_phentsize
        put(&mut f, 0x38, &phnum.to_le_bytes());
        // PT_LOAD: file 0x1000..0x1100 -> 0x200000, memsz 0x3000.
        let ph = 64;
        put(&mut f, ph, &PT_LOAD.to_le_bytes());
        put(&mut f, ph + 4, &5u32.to_le_bytes());
        put(&mut f, ph + 0x08, &0x1000u64.to_le_bytes());
        put(&mut f, ph + 0x10, &LOAD_ADDR.to_le_bytes());
        put(&mut f, ph + 0x18, &LOAD_ADDR.to_le_bytes());
        put(&mut f, ph + 0x20, &0x100u64.to_le_bytes());
        put(&mut f, ph + 0x28, &0x3000u64.to_le_bytes());
        if pvh_note {
            let ph = 64 + 56;
            put(&mut f, ph, &4u32.to_le_bytes()); // PT_NOTE
            put(&mut f, ph + 0x08, &0x1100u64.to_le_bytes());
            put(&mut f, ph + 0x20, &20u64.to_le_bytes());
            put(&mut f, ph + 0x28, &20u64.to_le_bytes());
            let mut note = Vec::new();
            note.extend_from_slice(&4u32.to_le_bytes()); // namesz
            note.extend_from_slice(&4u32.to_le_bytes()); // descsz
            note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&PVH_ENTRY.to_le_bytes());
            put(&mut f, 0x1100, &note);
        }
        put(&mut f, 0x1000, &[0xf4; 0x100]); // hlt
        f
    }

    /// A tiny bzImage: one setup sector plus `payload` bytes of kernel.
    fn build_bzimage(version: u16, xloadflags: u16, payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 1024 + payload];
        f[0x1f1] = 1; // setup_sects
        put(&mut f, 0x1fe, &0xaa55u16.to_le_bytes());
        put(&mut f, 0x202, &SETUP_HEADER_MAGIC.to_le_bytes());
        put(&mut f, 0x206, &version.to_le_bytes());
        f[0x211] = LOADED_HIGH;
        put(&mut f, 0x214, &0x10_0000u32.to_le_bytes());
        put(&mut f, 0x236, &xloadflags.to_le_bytes());
        put(&mut f, 0x260, &0x8000u32.to_le_bytes()); // init_size
        for b in &mut f[1024..] {
            *b = 0xab;
        }
        f
    }

    #[test]
    fn elf_without_note_boots_linux64() {
        let mem = guest_mem(16 << 20);
        let tmp = TempFile::new(&build_elf(false));
        let k = load_kernel(&mem, &mut tmp.open()).unwrap();
        assert_eq!(k.protocol, BootProtocol::Linux64);
        assert_eq!(k.entry, GuestAddress(LOAD_ADDR));
        assert_eq!(k.kernel_load, GuestAddress(LOAD_ADDR));
        assert_eq!(k.kernel_end, GuestAddress(LOAD_ADDR + 0x3000));
        assert!(k.setup_header.is_none());
        let b: u8 = mem.read_obj(GuestAddress(LOAD_ADDR + 0xff)).unwrap();
        assert_eq!(b, 0xf4);
    }

    #[test]
    fn elf_with_note_boots_pvh() {
        let mem = guest_mem(16 << 20);
        let tmp = TempFile::new(&build_elf(true));
        let k = load_kernel(&mem, &mut tmp.open()).unwrap();
        assert_eq!(k.protocol, BootProtocol::Pvh);
        assert_eq!(k.entry, GuestAddress(u64::from(PVH_ENTRY)));
    }

    #[test]
    fn elf_that_does_not_fit_is_rejected() {
        let mem = guest_mem(0x20_1000);
        let tmp = TempFile::new(&build_elf(false));
        assert!(matches!(
            load_kernel(&mem, &mut tmp.open()),
            Err(BootError::KernelDoesNotFit { .. })
        ));
    }

    #[test]
    fn bzimage_loads_with_setup_header() {
        let mem = guest_mem(16 << 20);
        let tmp = TempFile::new(&build_bzimage(0x20f, XLF_KERNEL_64, 0x2000));
        let k = load_kernel(&mem, &mut tmp.open()).unwrap();
        assert_eq!(k.protocol, BootProtocol::Linux64);
        assert_eq!(k.kernel_load, GuestAddress(0x10_0000));
        assert_eq!(k.entry, GuestAddress(0x10_0200));
        assert_eq!(k.kernel_end, GuestAddress(0x10_8000));
        let hdr = k.setup_header.unwrap();
        assert_eq!({ hdr.header }, SETUP_HEADER_MAGIC);
        let b: u8 = mem.read_obj(GuestAddress(0x10_1fff)).unwrap();
        assert_eq!(b, 0xab);
    }

    #[test]
    fn old_bzimage_is_rejected() {
        let mem = guest_mem(16 << 20);
        let tmp = TempFile::new(&build_bzimage(0x20a, 0, 0x2000));
        assert!(matches!(
            load_kernel(&mem, &mut tmp.open()),
            Err(BootError::BzImageNot64Bit { version: 0x20a, .. })
        ));
    }

    #[test]
    fn garbage_and_empty_are_rejected() {
        let mem = guest_mem(16 << 20);
        let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        let tmp = TempFile::new(&garbage);
        let err = load_kernel(&mem, &mut tmp.open()).unwrap_err();
        assert!(matches!(err, BootError::UnknownKernelFormat));
        assert!(err.to_string().contains("neither an ELF"));
        let tmp = TempFile::new(&[0x7f, b'E']);
        assert!(matches!(
            load_kernel(&mem, &mut tmp.open()),
            Err(BootError::UnknownKernelFormat)
        ));
        let tmp = TempFile::new(&[]);
        assert!(matches!(
            load_kernel(&mem, &mut tmp.open()),
            Err(BootError::EmptyKernel)
        ));
        // A truncated ELF header.
        let tmp = TempFile::new(&build_elf(false)[..40]);
        assert!(matches!(
            load_kernel(&mem, &mut tmp.open()),
            Err(BootError::BadElf(_))
        ));
    }

    #[test]
    fn kit_vmlinux_loads_as_pvh() {
        let path = "/work/shared/guest/vmlinux";
        let Ok(mut f) = File::open(path) else {
            println!("note: {path} absent, skipping");
            return;
        };
        let mem = guest_mem(64 << 20);
        let k = load_kernel(&mem, &mut f).unwrap();
        assert_eq!(k.protocol, BootProtocol::Pvh);
        assert!(k.entry.0 >= HIGH_RAM_START);
        assert!(k.kernel_end.0 <= 64 << 20);
    }

    #[test]
    fn kit_bzimage_loads_as_linux64() {
        let path = "/work/shared/guest/bzImage";
        let Ok(mut f) = File::open(path) else {
            println!("note: {path} absent, skipping");
            return;
        };
        let mem = guest_mem(128 << 20);
        let k = load_kernel(&mem, &mut f).unwrap();
        assert_eq!(k.protocol, BootProtocol::Linux64);
        assert!(k.setup_header.is_some());
        assert_eq!(k.entry.0, k.kernel_load.0 + 0x200);
    }

    #[test]
    fn initramfs_goes_high_and_page_aligned() {
        let mem = guest_mem(16 << 20);
        let data = vec![0x5au8; 0x1801];
        let tmp = TempFile::new(&data);
        let info = load_initramfs(&mem, &mut tmp.open()).unwrap();
        assert_eq!(info.size, 0x1801);
        assert_eq!(info.addr.0 % PAGE_SIZE, 0);
        assert!(info.addr.0 + info.size <= 16 << 20);
        assert!(info.addr.0 + info.size + PAGE_SIZE > 16 << 20);
        let b: u8 = mem.read_obj(GuestAddress(info.addr.0 + 0x1800)).unwrap();
        assert_eq!(b, 0x5a);
    }

    #[test]
    fn initramfs_too_large_is_rejected() {
        let mem = guest_mem(4 << 20);
        let tmp = TempFile::new(&vec![1u8; 3 << 20]);
        let mut f = tmp.open();
        assert!(matches!(
            load_initramfs_above(&mem, &mut f, GuestAddress(0x20_0000)),
            Err(BootError::InitramfsTooLarge { .. })
        ));
        let tmp = TempFile::new(&vec![1u8; 5 << 20]);
        assert!(matches!(
            load_initramfs(&mem, &mut tmp.open()),
            Err(BootError::InitramfsTooLarge { .. })
        ));
    }
}
