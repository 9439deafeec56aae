//! Helpers shared by the chv fuzz targets: guest memory, an in-memory disk,
//! a no-op interrupt and a per-process scratch directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use virtio_devices::block::disk::{DiskError, DiskImage};
use virtio_devices::{GuestMemory, VirtioInterrupt, VirtioInterruptType};
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

/// Size of the guest memory the targets build.
pub const MEM_SIZE: u64 = 1 << 20;
/// Start of the 4 KiB hole of the split layout.
pub const HOLE_START: u64 = MEM_SIZE / 2;
/// Size of that hole.
pub const HOLE_SIZE: u64 = 0x1000;

/// Fresh, zeroed guest memory: one 1 MiB region, or (when `split`) two
/// regions around a hole so chains can straddle a gap.
pub fn guest_memory(split: bool) -> GuestMemory {
    let ranges: Vec<(GuestAddress, usize)> = if split {
        vec![
            (GuestAddress(0), HOLE_START as usize),
            (
                GuestAddress(HOLE_START + HOLE_SIZE),
                (MEM_SIZE - HOLE_START) as usize,
            ),
        ]
    } else {
        vec![(GuestAddress(0), MEM_SIZE as usize)]
    };
    // Fixed, valid ranges: failing here is a harness bug, not a finding.
    let mem = GuestMemoryMmap::from_ranges(&ranges).expect("guest memory");
    GuestMemoryAtomic::new(mem)
}

/// Counts interrupts; never fails.
#[derive(Default)]
pub struct CountingInterrupt {
    /// Number of triggers seen.
    pub count: AtomicU64,
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, _kind: VirtioInterruptType) -> std::io::Result<()> {
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A disk held in a `Vec`, so block requests cost no file I/O.
pub struct MemDisk {
    data: Vec<u8>,
    discard: bool,
}

impl MemDisk {
    /// A zeroed disk of `size` bytes; `discard` selects whether discard
    /// and write-zeroes are offered.
    pub fn new(size: usize, discard: bool) -> Self {
        MemDisk {
            data: vec![0; size],
            discard,
        }
    }

    fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, DiskError> {
        let size = self.data.len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(DiskError::OutOfRange { offset, len, size }),
        }
    }
}

impl DiskImage for MemDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let r = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        let r = self.range(offset, buf.len() as u64)?;
        self.data[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, _unmap: bool) -> Result<(), DiskError> {
        if !self.discard {
            return Err(DiskError::Unsupported("discard"));
        }
        let r = self.range(offset, len)?;
        self.data[r].fill(0);
        Ok(())
    }

    fn supports_discard(&self) -> bool {
        self.discard
    }

    fn id_basis(&self) -> String {
        String::from("memdisk")
    }
}

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_scratch() {
    if let Some(p) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// A directory private to this process (under `$CHV_FUZZ_SCRATCH`, else on
/// tmpfs when available), created on first use and removed at exit.
/// Targets reuse fixed file names in it, so it never grows with the number
/// of iterations.
pub fn scratch_dir() -> &'static Path {
    SCRATCH.get_or_init(|| {
        let base = if let Some(dir) = std::env::var_os("CHV_FUZZ_SCRATCH") {
            PathBuf::from(dir)
        } else if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("chv-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        // SAFETY: `remove_scratch` is a plain extern "C" fn with no
        // arguments that only touches a static; atexit just records it.
        unsafe { libc::atexit(remove_scratch) };
        dir
    })
}
