//! The host mapping of a virtio-pmem backing file.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Sizes must be multiples of this (Linux hot-adds device memory in
/// 2 MiB subsections).
pub const PMEM_ALIGNMENT: u64 = 2 << 20;

/// Why a backing file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PmemError {
    /// The file could not be opened or sized.
    #[error("file={}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The size is 0 or not a multiple of [`PMEM_ALIGNMENT`].
    #[error("size={0}: must be a non-zero multiple of 2 MiB")]
    Size(u64),
    /// `discard_writes=on` with a file shorter than `size` (it would have
    /// to be extended, and the file must not change).
    #[error("size={size}: the file has only {len} bytes and discard_writes=on must not extend it")]
    TooShort {
        /// Configured size.
        size: u64,
        /// File length.
        len: u64,
    },
    /// mmap failed.
    #[error("cannot map the file: {0}")]
    Map(std::io::Error),
    /// Anything else.
    #[error("{0}")]
    Io(std::io::Error),
}

/// A backing file mapped into the VMM, ready to be a KVM memory slot.
pub struct PmemMapping {
    file: File,
    addr: *mut libc::c_void,
    size: u64,
    discard_writes: bool,
    guest_addr: u64,
}

// SAFETY: the mapping is plain memory owned by this struct; the pointer is
// only handed to KVM and unmapped once, on drop.
unsafe impl Send for PmemMapping {}
// SAFETY: as above; no method mutates through the pointer.
unsafe impl Sync for PmemMapping {}

impl PmemMapping {
    /// Opens `path` and maps `size` bytes of it (default: the file's
    /// length). A shared mapping extends a shorter file; with
    /// `discard_writes` the file is opened read-only and mapped private.
    pub fn open(path: &Path, size: Option<u64>, discard_writes: bool) -> Result<Self, PmemError> {
        let open_err = |source| PmemError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!discard_writes)
            .open(path)
            .map_err(open_err)?;
        // Seeking works for block devices too, whose metadata length is 0.
        let len = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        let size = size.unwrap_or(len);
        if size == 0 || !size.is_multiple_of(PMEM_ALIGNMENT) {
            return Err(PmemError::Size(size));
        }
        if size > len {
            if discard_writes {
                return Err(PmemError::TooShort { size, len });
            }
            // Past the end of the file the guest would get SIGBUS'd pages.
            file.set_len(size).map_err(open_err)?;
        }
        let map_len = usize::try_from(size).map_err(|_| PmemError::Size(size))?;
        let flags = if discard_writes {
            libc::MAP_PRIVATE
        } else {
            libc::MAP_SHARED
        } | libc::MAP_NORESERVE;
        // SAFETY: a fresh mapping of `map_len` bytes of an open file; the
        // kernel picks the address; the result is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(PmemError::Map(std::io::Error::last_os_error()));
        }
        Ok(PmemMapping {
            file,
            addr,
            size,
            discard_writes,
            guest_addr: 0,
        })
    }

    /// Records where the VMM placed the mapping in guest-physical space.
    pub fn at(mut self, guest_addr: u64) -> Self {
        self.guest_addr = guest_addr;
        self
    }

    /// Guest-physical address given to [`Self::at`].
    pub fn guest_addr(&self) -> u64 {
        self.guest_addr
    }

    /// Where the file is mapped in the VMM.
    pub fn host_addr(&self) -> u64 {
        self.addr as u64
    }

    /// Bytes mapped.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The backing file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether writes stay in a private copy.
    pub fn discard_writes(&self) -> bool {
        self.discard_writes
    }
}

impl Drop for PmemMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`; KVM's slot on
        // it is removed before the mapping is dropped.
        unsafe { libc::munmap(self.addr, self.size as usize) };
    }
}
