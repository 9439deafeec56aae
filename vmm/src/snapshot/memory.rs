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
    if region.file_offset().is_some() {
        return None;
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
pub fn restore(
    path: &Path,
    ranges: &[MemoryRange],
    ram_size: u64,
    mode: MemoryRestoreMode,
) -> Result<GuestMemoryMmap, SnapshotError> {
    let file = File::open(path).map_err(|e| io("open", path, e))?;
    let file_len = file.metadata().map_err(|e| io("stat", path, e))?.len();
    validate(ranges, file_len, ram_size)?;
    let mut regions = Vec::with_capacity(ranges.len());
    for r in ranges {
        let len = usize::try_from(r.len)
            .map_err(|_| SnapshotError::Invalid(format!("range at {:#x} too large", r.gpa)))?;
        let map_err = |e: vm_memory::mmap::MmapRegionError| {
            SnapshotError::Memory(format!("mapping {len} bytes at {:#x}: {e}", r.gpa))
        };
        let builder = MmapRegionBuilder::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_PRIVATE);
        let mapping = match mode {
            MemoryRestoreMode::Lazy => {
                let clone = file.try_clone().map_err(|e| io("dup", path, e))?;
                builder
                    .with_file_offset(FileOffset::new(clone, r.file_offset))
                    .build()
                    .map_err(map_err)?
            }
            MemoryRestoreMode::Prefault => {
                let mapping = builder
                    .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
                    .build()
                    .map_err(map_err)?;
                // SAFETY: the fresh anonymous mapping covers `len` bytes and
                // nothing else refers to it yet.
                let bytes = unsafe { std::slice::from_raw_parts_mut(mapping.as_ptr(), len) };
                copy_non_holes(&file, r.file_offset, bytes).map_err(|e| io("read", path, e))?;
                mapping
            }
        };
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.gpa)).ok_or_else(|| {
            SnapshotError::Invalid(format!("range at {:#x} overflows the address space", r.gpa))
        })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| SnapshotError::Invalid(format!("memory ranges: {e}")))
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

    fn roundtrip(mode: MemoryRestoreMode) {
        let dir = std::env::temp_dir().join(format!("chv-mem-{}-{mode:?}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memory");
        let ranges = save(&sample(), &path).unwrap();
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[1].file_offset, 1 << 20);
        let back = restore(&path, &ranges, 3 << 20, mode).unwrap();
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
        let again = restore(&path, &ranges, 3 << 20, mode).unwrap();
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
