//! Giving guest RAM back to the host: what the balloon does with inflated
//! and reported pages and virtio-mem with unplugged blocks.
//!
//! Private memory (anonymous, or a private file mapping) is dropped with
//! `MADV_DONTNEED`: the next guest access faults in a zero page (or the
//! file's page). Shared memory (a memfd or file that a vhost-user backend
//! may map too) has the file range punched out (`fallocate(PUNCH_HOLE)`),
//! which frees the pages for every process mapping them. Huge-page memory
//! can only be freed in whole huge pages, so a range is shrunk to the
//! huge pages it covers.

use std::os::fd::AsRawFd;

use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

/// Why a range could not be given back.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    /// (Part of) the range is not guest RAM.
    #[error("range {gpa:#x}+{len:#x} is not guest RAM")]
    NotRam {
        /// Start of the range.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// The host refused.
    #[error("giving back {gpa:#x}+{len:#x}: {err}")]
    Host {
        /// Start of the piece that failed.
        gpa: u64,
        /// Its length.
        len: u64,
        /// What madvise or fallocate said.
        err: std::io::Error,
    },
}

/// Checks that `[gpa, gpa + len)` is guest RAM (possibly over several
/// regions) without touching it.
pub fn is_ram(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> bool {
    let Some(end) = gpa.checked_add(len) else {
        return false;
    };
    let mut at = gpa;
    while at < end {
        let Some(region) = mem.find_region(GuestAddress(at)) else {
            return false;
        };
        let region_end = region.start_addr().0 + region.len();
        at = region_end.min(end);
    }
    true
}

/// Gives `[gpa, gpa + len)` back to the host; returns the bytes freed
/// (less than `len` on huge-page memory when the range is not made of
/// whole huge pages). `huge_page` is the huge page size of hugetlb
/// regions. The range must be RAM ([`is_ram`]) or nothing is done.
pub fn discard(
    mem: &GuestMemoryMmap,
    gpa: u64,
    len: u64,
    huge_page: u64,
) -> Result<u64, DiscardError> {
    if !is_ram(mem, gpa, len) {
        return Err(DiscardError::NotRam { gpa, len });
    }
    let end = gpa + len;
    let mut at = gpa;
    let mut freed = 0;
    while at < end {
        let Some(region) = mem.find_region(GuestAddress(at)) else {
            return Err(DiscardError::NotRam { gpa, len });
        };
        let start = region.start_addr().0;
        let piece_end = (start + region.len()).min(end);
        let (mut from, mut to) = (at, piece_end);
        if region.get_mmap().is_hugetlbfs() == Some(true) && huge_page.is_power_of_two() {
            from = from.next_multiple_of(huge_page);
            to &= !(huge_page - 1);
        }
        if to > from {
            discard_in_region(region, from - start, to - from).map_err(|err| {
                DiscardError::Host {
                    gpa: from,
                    len: to - from,
                    err,
                }
            })?;
            freed += to - from;
        }
        at = piece_end;
    }
    Ok(freed)
}

/// Frees `len` bytes at `offset` into `region`.
fn discard_in_region(
    region: &vm_memory::GuestRegionMmap,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    let shared = region.get_mmap().flags() & libc::MAP_SHARED != 0;
    if let (true, Some(fo)) = (shared, region.file_offset()) {
        let file_at = fo.start() + offset;
        // SAFETY: fallocate on a descriptor the region owns; punching a
        // hole only frees the file's pages (later reads see zeroes).
        let rc = unsafe {
            libc::fallocate(
                fo.file().as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                file_at as libc::off_t,
                len as libc::off_t,
            )
        };
        return if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        };
    }
    let host = region
        .get_host_address(MemoryRegionAddress(offset))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // `len` fits the region, which is mapped in this process.
    let len = len as usize;
    // SAFETY: `host..host+len` lies inside the region's mapping (checked
    // by the caller against the region bounds); MADV_DONTNEED only drops
    // its pages, which read back as zero (or as the mapped file).
    if unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pages of guest RAM that hold memory in this process, in `[gpa, gpa +
/// len)`, counted with `mincore` (for tests and statistics).
pub fn resident_bytes(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> u64 {
    let mut total = 0;
    let page = 4096u64;
    let mut at = gpa & !(page - 1);
    let end = gpa.saturating_add(len);
    while at < end {
        let Some(region) = mem.find_region(GuestAddress(at)) else {
            break;
        };
        let rend = (region.start_addr().0 + region.len()).min(end);
        let Ok(host) = region.get_host_address(MemoryRegionAddress(at - region.start_addr().0))
        else {
            break;
        };
        let pages = ((rend - at) / page) as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: `host` is page-aligned inside the region's mapping and
        // `pages` pages of it are mapped; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(host.cast(), pages * page as usize, vec.as_mut_ptr()) };
        if rc == 0 {
            total += vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page;
        }
        at = rend;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::{Bytes, FileOffset, GuestRegionMmap};

    const MIB: u64 = 1 << 20;

    /// 4 MiB of guest RAM at 1 MiB backed by a shared memfd, from offset 1 MiB of it.
    fn shared_ram() -> (GuestMemoryMmap, File) {
        // SAFETY: NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"discard-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(5 * MIB).unwrap();
        let mapping = MmapRegionBuilder::new(4 << 20)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED)
            .with_file_offset(FileOffset::new(file.try_clone().unwrap(), MIB))
            .build()
            .unwrap();
        let region = GuestRegionMmap::new(mapping, GuestAddress(MIB)).unwrap();
        (GuestMemoryMmap::from_regions(vec![region]).unwrap(), file)
    }

    #[test]
    fn shared_memory_is_punched_out_of_the_memfd() {
        let (mem, file) = shared_ram();
        mem.write_slice(&vec![0x5au8; (2 * MIB) as usize], GuestAddress(MIB))
            .unwrap();
        let before = file.metadata().unwrap().blocks() * 512;
        assert!(before >= 2 * MIB, "{before}");
        assert_eq!(discard(&mem, MIB + 4096, MIB, 2 * MIB).unwrap(), MIB);
        let after = file.metadata().unwrap().blocks() * 512;
        assert_eq!(before - after, MIB, "memfd pages not freed");
        // Every mapper of the memfd sees the hole as zeroes.
        let mut b = [0xffu8; 2];
        file.read_exact_at(&mut b, MIB + 4096 + 10).unwrap();
        assert_eq!(b, [0, 0]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(MIB + 4096)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(MIB)).unwrap(), 0x5a);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(MIB + 4096 + MIB)).unwrap(),
            0x5a
        );
    }

    #[test]
    fn ranges_outside_ram_are_refused_untouched() {
        let (mem, _file) = shared_ram();
        mem.write_obj(1u8, GuestAddress(MIB)).unwrap();
        for (gpa, len) in [
            (0, 8192),
            (5 * MIB - 4096, 8192),
            (u64::MAX - 10, 100),
            (6 * MIB, 4096),
        ] {
            assert!(matches!(
                discard(&mem, gpa, len, 2 * MIB),
                Err(DiscardError::NotRam { .. })
            ));
        }
        assert_eq!(mem.read_obj::<u8>(GuestAddress(MIB)).unwrap(), 1);
        assert!(is_ram(&mem, MIB, 4 * MIB));
        assert!(!is_ram(&mem, MIB, 4 * MIB + 1));
    }

    #[test]
    fn private_memory_is_dropped_with_dontneed() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        mem.write_slice(&vec![1u8; (4 * MIB) as usize], GuestAddress(0))
            .unwrap();
        assert_eq!(resident_bytes(&mem, 0, 4 * MIB), 4 * MIB);
        discard(&mem, MIB, 2 * MIB, 2 * MIB).unwrap();
        assert_eq!(resident_bytes(&mem, 0, 4 * MIB), 2 * MIB);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(MIB)).unwrap(), 0);
    }
}
