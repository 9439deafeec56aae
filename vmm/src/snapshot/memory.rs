//! Guest RAM in a snapshot: one file holding every RAM region back to
//! back, written sparsely (pages that are all zero stay holes), and mapped
//! back either lazily (a private file mapping: pages are read on first
//! touch, the guest's writes stay in the process) or eagerly (copied into
//! anonymous memory before the guest runs).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use super::SnapshotError;
use crate::memory::RamZone;

/// Bytes compared at a time when looking for all-zero pages.
const PAGE: usize = 4096;

/// One guest RAM region and where its bytes are in the memory file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemoryRange {
    /// Guest physical address of the region.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset of the region's first byte in the memory file.
    pub file_offset: u64,
}

/// How a restore brings guest RAM back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryRestoreMode {
    /// Map the file privately; pages load on first touch.
    Lazy,
    /// Copy the whole file into anonymous memory first.
    Prefault,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> SnapshotError {
    SnapshotError::Io(format!("{what} {}: {e}", path.display()))
}

fn is_zero(page: &[u8]) -> bool {
    // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets
    // the aligned middle of the byte slice.
    let (head, body, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// The bytes of `region` as a slice.
///
/// The caller must ensure nothing writes guest memory while the slice is
/// in use (the VM is paused and its device workers are stopped).
fn region_bytes(region: &GuestRegionMmap) -> &[u8] {
    // SAFETY: the mapping covers `len` bytes from `as_ptr()` and lives as
    // long as `region`; the VM is paused, so no vCPU or device writes it
    // while the snapshot reads it.
    unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len() as usize) }
}

/// Which pages of `region` the process ever touched, from
/// `/proc/self/pagemap` (present or swapped); `None` when unknown. Only
/// for anonymous memory: pages of a file mapping (a lazily restored VM)
/// hold data before they are touched. Untouched pages are zero and need
/// not be read, which would fault each one in.
pub(crate) fn touched_pages(region: &GuestRegionMmap) -> Option<Vec<bool>> {
    const PRESENT_OR_SWAPPED: u64 = 3 << 62;
    if let Some(fo) = region.file_offset() {
        // Shared memory (a memfd): the pages that hold data are the
        // file's, wherever they were written (this process or a vhost-user
        // backend). A private file mapping holds the file's data untouched.
        let shared = region.get_mmap().flags() & libc::MAP_SHARED != 0;
        return if shared {
            file_data_pages(fo.file(), fo.start(), region.len())
        } else {
            None
        };
    }
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let first = region.as_ptr() as u64 / PAGE as u64;
    let pages = usize::try_from(region.len()).ok()? / PAGE;
    let mut raw = vec![0u8; pages * 8];
    pagemap.read_exact_at(&mut raw, first * 8).ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| {
                let mut b = [0u8; 8];
                b.copy_from_slice(e);
                u64::from_le_bytes(b) & PRESENT_OR_SWAPPED != 0
            })
            .collect(),
    )
}

/// Which pages of `file`'s `[start, start + len)` hold data (are not
/// holes), from `SEEK_DATA`/`SEEK_HOLE`; `None` where the file system
/// cannot tell.
fn file_data_pages(file: &File, start: u64, len: u64) -> Option<Vec<bool>> {
    use std::os::fd::AsRawFd;
    let pages = usize::try_from(len).ok()? / PAGE;
    let mut map = vec![false; pages];
    let end = start + len;
    let mut pos = start;
    while pos < end {
        // SAFETY: plain lseek on a descriptor the region owns.
        let data = unsafe { libc::lseek(file.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            return (e.raw_os_error() == Some(libc::ENXIO)).then_some(map);
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return None;
        }
        let hole = (hole as u64).min(end);
        let first = ((data - start) / PAGE as u64) as usize;
        let last = (hole - start).div_ceil(PAGE as u64) as usize;
        for page in map.iter_mut().take(last).skip(first) {
            *page = true;
        }
        pos = hole.max(data + 1);
    }
    Some(map)
}

/// Writes every RAM region of `memory` to `path` (created or truncated),
/// leaving all-zero pages as holes. Returns where each region went.
pub fn save(memory: &GuestMemoryMmap, path: &Path) -> Result<Vec<MemoryRange>, SnapshotError> {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io("create", path, e))?;
    let mut ranges = Vec::new();
    let mut offset = 0u64;
    for region in memory.iter() {
        let bytes = region_bytes(region);
        let touched = touched_pages(region);
        // Write runs of non-zero pages with one call each.
        let mut run_start: Option<usize> = None;
        for (i, page) in bytes.chunks(PAGE).enumerate() {
            let at = i * PAGE;
            let zero = match &touched {
                Some(t) if !t.get(i).copied().unwrap_or(true) => true,
                _ => is_zero(page),
            };
            match (zero, run_start) {
                (false, None) => run_start = Some(at),
                (true, Some(start)) => {
                    file.write_all_at(&bytes[start..at], offset + start as u64)
                        .map_err(|e| io("write", path, e))?;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run_start {
            file.write_all_at(&bytes[start..], offset + start as u64)
                .map_err(|e| io("write", path, e))?;
        }
        ranges.push(MemoryRange {
            gpa: region.start_addr().0,
            len: region.len(),
            file_offset: offset,
        });
        offset += region.len();
    }
    file.set_len(offset).map_err(|e| io("size", path, e))?;
    file.sync_all().map_err(|e| io("sync", path, e))?;
    Ok(ranges)
}

/// Checks that `ranges` are page-aligned, do not overlap, fit the memory
/// file `len` bytes long and total `ram_size`.
pub fn validate(ranges: &[MemoryRange], file_len: u64, ram_size: u64) -> Result<(), SnapshotError> {
    let bad = |m: String| SnapshotError::Invalid(format!("memory ranges: {m}"));
    let mut total = 0u64;
    let mut last_end = 0u64;
    for r in ranges {
        if r.len == 0 || r.gpa % PAGE as u64 != 0 || r.len % PAGE as u64 != 0 {
            return Err(bad(format!(
                "range at {:#x} is empty or not page-aligned",
                r.gpa
            )));
        }
        if r.gpa < last_end {
            return Err(bad(format!(
                "range at {:#x} overlaps the previous one",
                r.gpa
            )));
        }
        last_end = r
            .gpa
            .checked_add(r.len)
            .ok_or_else(|| bad("address overflow".into()))?;
        let end = r
            .file_offset
            .checked_add(r.len)
            .ok_or_else(|| bad("file offset overflow".into()))?;
        if end > file_len {
            return Err(bad(format!(
                "the memory file is {file_len} bytes but range at {:#x} ends at byte {end} \
                 (truncated snapshot?)",
                r.gpa
            )));
        }
        total += r.len;
    }
    if total != ram_size {
        return Err(bad(format!(
            "they hold {total} bytes but the VM config says {ram_size}"
        )));
    }
    Ok(())
}

/// Maps guest RAM back from the memory file at `path` as `ranges` describe.
///
/// Plain anonymous RAM restores lazily when `mode` asks for it; RAM with
/// another backing (shared memfd, huge pages, a zone file) is created as
/// `zones` say and the file's contents copied in, as the guest's pages
/// must live in that backing.
pub fn restore(
    path: &Path,
    ranges: &[MemoryRange],
    zones: &[RamZone],
    mode: MemoryRestoreMode,
) -> Result<GuestMemoryMmap, SnapshotError> {
    let file = File::open(path).map_err(|e| io("open", path, e))?;
    let file_len = file.metadata().map_err(|e| io("stat", path, e))?.len();
    let ram_size = zones.iter().map(|z| z.size).sum();
    validate(ranges, file_len, ram_size)?;
    let plain = zones.iter().all(|z| {
        let b = &z.backing;
        !b.shared && !b.hugepages && b.file.is_none()
    });
    if !plain || mode == MemoryRestoreMode::Prefault {
        return restore_into_backing(&file, path, ranges, zones);
    }
    let mut regions = Vec::with_capacity(ranges.len());
    for r in ranges {
        let len = usize::try_from(r.len)
            .map_err(|_| SnapshotError::Invalid(format!("range at {:#x} too large", r.gpa)))?;
        let clone = file.try_clone().map_err(|e| io("dup", path, e))?;
        let mapping = MmapRegionBuilder::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_PRIVATE)
            .with_file_offset(FileOffset::new(clone, r.file_offset))
            .build()
            .map_err(|e| {
                SnapshotError::Memory(format!("mapping {len} bytes at {:#x}: {e}", r.gpa))
            })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.gpa)).ok_or_else(|| {
            SnapshotError::Invalid(format!("range at {:#x} overflows the address space", r.gpa))
        })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| SnapshotError::Invalid(format!("memory ranges: {e}")))
}

/// Creates RAM for `zones` over the snapshot's `ranges` and copies the
/// memory file's data into it (holes stay unallocated).
fn restore_into_backing(
    file: &File,
    path: &Path,
    ranges: &[MemoryRange],
    zones: &[RamZone],
) -> Result<GuestMemoryMmap, SnapshotError> {
    let layout: Vec<(GuestAddress, usize)> = ranges
        .iter()
        .map(|r| {
            usize::try_from(r.len)
                .map(|len| (GuestAddress(r.gpa), len))
                .map_err(|_| SnapshotError::Invalid(format!("range at {:#x} too large", r.gpa)))
        })
        .collect::<Result<_, _>>()?;
    let ram = crate::memory::create_guest_ram(zones, &layout)
        .map_err(|e| SnapshotError::Memory(e.to_string()))?;
    for region in ram.memory.iter() {
        let gpa = region.start_addr().0;
        let range = ranges
            .iter()
            .find(|r| r.gpa <= gpa && gpa - r.gpa < r.len)
            .ok_or_else(|| SnapshotError::Invalid(format!("no saved range holds {gpa:#x}")))?;
        let len = region.len() as usize;
        // SAFETY: the fresh mapping covers `len` bytes and no vCPU or
        // device uses it yet.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), len) };
        copy_non_holes(file, range.file_offset + (gpa - range.gpa), bytes)
            .map_err(|e| io("read", path, e))?;
    }
    Ok(ram.memory)
}

/// Reads `dst.len()` bytes from `file` at `offset` into `dst`, skipping the
/// file's holes (the destination is fresh anonymous memory, already zero,
/// so holes need no copy and stay unallocated).
fn copy_non_holes(file: &File, offset: u64, dst: &mut [u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let end = offset + dst.len() as u64;
    let mut pos = offset;
    while pos < end {
        // SAFETY: plain lseek on a descriptor we own.
        let data = unsafe { libc::lseek(file.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only holes are left
            }
            return Err(e);
        }
        let data = (data as u64).min(end);
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let hole = (hole as u64).min(end);
        if hole > data {
            let from = (data - offset) as usize;
            let to = (hole - offset) as usize;
            file.read_exact_at(&mut dst[from..to], data)?;
        }
        pos = hole.max(data + 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn sample() -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(4 << 20), 2 << 20),
        ])
        .unwrap();
        mem.write_obj(0x1234_5678u32, GuestAddress(0x100)).unwrap();
        mem.write_obj(0xdead_beefu32, GuestAddress((5 << 20) + 0xffc))
            .unwrap();
        mem
    }

    fn plain_zones(size: u64) -> Vec<RamZone> {
        vec![RamZone {
            field: "memory".into(),
            size,
            backing: crate::memory::RamBacking::default(),
        }]
    }

    fn roundtrip(mode: MemoryRestoreMode) {
        let dir = std::env::temp_dir().join(format!("chv-mem-{}-{mode:?}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memory");
        let ranges = save(&sample(), &path).unwrap();
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[1].file_offset, 1 << 20);
        let zones = plain_zones(3 << 20);
        let back = restore(&path, &ranges, &zones, mode).unwrap();
        assert_eq!(
            back.read_obj::<u32>(GuestAddress(0x100)).unwrap(),
            0x1234_5678
        );
        assert_eq!(
            back.read_obj::<u32>(GuestAddress((5 << 20) + 0xffc))
                .unwrap(),
            0xdead_beef
        );
        assert_eq!(back.read_obj::<u64>(GuestAddress(0x2000)).unwrap(), 0);
        // Writes to the restored guest stay out of the snapshot file.
        back.write_obj(7u32, GuestAddress(0x100)).unwrap();
        let again = restore(&path, &ranges, &zones, mode).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x100)).unwrap(),
            0x1234_5678
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lazy_restore_reads_back_what_was_saved() {
        roundtrip(MemoryRestoreMode::Lazy);
    }

    #[test]
    fn prefault_restore_reads_back_what_was_saved() {
        roundtrip(MemoryRestoreMode::Prefault);
    }

    #[test]
    fn shared_ram_is_saved_from_the_memfd_and_restored_into_one() {
        let dir = std::env::temp_dir().join(format!("chv-mem-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memory");
        let zones = vec![RamZone {
            field: "memory".into(),
            size: 3 << 20,
            backing: crate::memory::RamBacking {
                shared: true,
                ..Default::default()
            },
        }];
        let layout = [(GuestAddress(0), 1 << 20), (GuestAddress(4 << 20), 2 << 20)];
        let ram = crate::memory::create_guest_ram(&zones, &layout).unwrap();
        // Written through the memfd, as a vhost-user backend would: not
        // in this process's page tables, still saved.
        let region = ram.memory.iter().nth(1).unwrap();
        let fo = region.file_offset().unwrap();
        fo.file()
            .write_all_at(&0xfeed_f00du32.to_le_bytes(), fo.start() + 0x2000)
            .unwrap();
        let touched = touched_pages(region).unwrap();
        assert_eq!(touched.iter().filter(|&&t| t).count(), 1);
        assert!(touched[2]);
        let ranges = save(&ram.memory, &path).unwrap();
        for mode in [MemoryRestoreMode::Lazy, MemoryRestoreMode::Prefault] {
            let back = restore(&path, &ranges, &zones, mode).unwrap();
            for region in back.iter() {
                assert!(
                    region.file_offset().is_some(),
                    "restored shared RAM is a memfd"
                );
                assert!(region.get_mmap().flags() & libc::MAP_SHARED != 0);
            }
            assert_eq!(
                back.read_obj::<u32>(GuestAddress((4 << 20) + 0x2000))
                    .unwrap(),
                0xfeed_f00d
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zero_pages_are_holes() {
        let dir = std::env::temp_dir().join(format!("chv-mem-holes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memory");
        save(&sample(), &path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 3 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 64 * 1024, "{} blocks", meta.blocks());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_or_inconsistent_ranges_are_refused() {
        let r = |gpa, len, off| MemoryRange {
            gpa,
            len,
            file_offset: off,
        };
        assert!(validate(&[r(0, 4096, 0)], 4096, 4096).is_ok());
        let e = validate(&[r(0, 8192, 0)], 4096, 8192).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(validate(&[r(0, 4096, 0)], 4096, 8192).is_err());
        assert!(validate(&[r(0, 4000, 0)], 4096, 4000).is_err());
        assert!(validate(&[r(0, 8192, 0), r(4096, 4096, 0)], 1 << 20, 12288).is_err());
        assert!(validate(&[r(0, 4096, u64::MAX)], 4096, 4096).is_err());
    }
}
