//! Disk image formats behind virtio-blk: raw files and qcow2.
//!
//! `open_disk` detects the format, takes an advisory OFD lock as Cloud
//! Hypervisor does (so neither a second chv, a CH nor a QEMU can write the
//! image while chv does), and hands back a [`DiskImage`] that the block
//! device drives with byte offsets. Everything here treats guest offsets and
//! image metadata as hostile: errors, never panics.

mod file;
pub mod qcow2;
pub mod raw;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub use file::ALIGNMENT;

/// Deepest backing chain followed before giving up (guards against loops).
pub const MAX_BACKING_DEPTH: u32 = 16;

/// Errors from disk images; Display names the image path where known.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A host I/O error while serving a request.
    #[error("disk I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The image file could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The image path names a directory.
    #[error("disk image {0} is a directory")]
    IsDirectory(PathBuf),
    /// A request reaches past the end of the virtual disk.
    #[error("request at offset {offset} of {len} bytes is past the end of the {size}-byte disk")]
    OutOfRange {
        /// First byte of the request.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// Virtual disk size.
        size: u64,
    },
    /// A write to a read-only disk.
    #[error("disk is read-only")]
    ReadOnly,
    /// An image feature this implementation does not handle.
    #[error("unsupported disk image feature: {0}")]
    Unsupported(&'static str),
    /// The image metadata is inconsistent.
    #[error("corrupt disk image: {0}")]
    Corrupt(String),
    /// Another process holds the image's lock.
    #[error("disk image {0} is locked by another process (is another VMM using it?)")]
    Locked(PathBuf),
    /// The filesystem refused `O_DIRECT`.
    #[error("the filesystem holding {0} does not support O_DIRECT; open it without direct I/O")]
    DirectUnsupported(PathBuf),
    /// The format name given is not known.
    #[error("unknown disk image format \"{0}\" (expected raw or qcow2)")]
    UnknownFormat(String),
    /// A qcow2 version other than 2 or 3.
    #[error("unsupported qcow2 version {0} (only 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    /// qcow2 incompatible feature bits that are not understood.
    #[error("qcow2 image uses unknown incompatible features {0:#x}")]
    UnknownFeatures(u64),
    /// The backing chain is deeper than [`MAX_BACKING_DEPTH`] (or loops).
    #[error("backing file chain deeper than {MAX_BACKING_DEPTH}")]
    BackingTooDeep,
    /// An error about a particular image file.
    #[error("disk image {path}: {source}")]
    Image {
        /// The image path.
        path: PathBuf,
        /// What went wrong.
        source: Box<DiskError>,
    },
}

impl DiskError {
    /// The innermost error, looking through [`DiskError::Image`] wrappers.
    pub fn root(&self) -> &DiskError {
        match self {
            DiskError::Image { source, .. } => source.root(),
            other => other,
        }
    }
}

/// A guest-visible disk backed by a host image.
pub trait DiskImage: Send {
    /// Virtual size in bytes (what the guest sees).
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; unallocated space reads as zeros (or from
    /// the backing file). Error if past the end.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError>;
    /// Writes `buf` at `offset` (allocating clusters for qcow2). Error if
    /// read-only or past the end.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError>;
    /// Makes every completed write durable (fsync of data and metadata).
    fn flush(&mut self) -> Result<(), DiskError>;
    /// Deallocates a range if the format can. Ok(()) when done.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError>;
    /// Writes zeros over a range (may deallocate when `unmap`).
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError>;
    /// Whether discard/write_zeroes are supported (drives the virtio
    /// features offered).
    fn supports_discard(&self) -> bool;
    /// A stable identifier basis (device+inode) for GET_ID when no serial
    /// is given.
    fn id_basis(&self) -> String;
    /// Releases (`false`) or takes again (`true`) the image's advisory
    /// lock, so another VMM on this host can take the disk over during a
    /// live migration. Images without a lock of their own do nothing.
    fn set_locked(&mut self, locked: bool) -> Result<(), DiskError> {
        let _ = locked;
        Ok(())
    }
}

/// How to open a disk image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskOptions {
    /// Open read-only (shared lock, writes fail with [`DiskError::ReadOnly`]).
    pub readonly: bool,
    /// Bypass the host page cache with `O_DIRECT`.
    pub direct: bool,
    /// Which bytes of the image file the lock covers.
    pub lock_granularity: LockGranularity,
}

/// Which bytes of an image file its advisory lock covers (Cloud
/// Hypervisor's `disks[].lock_granularity`). Either way the lock is an
/// open file description (OFD) `fcntl` lock: a write lock for a writable
/// disk, a read lock for a read-only one, as CH takes it, so chv, CH and
/// QEMU (which holds OFD read locks on bytes 100 and up, 200 and up) see
/// each other's locks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LockGranularity {
    /// Bytes `[0, size)`, where size is the larger of the file's length
    /// and the virtual disk size (the whole file when that is 0): the
    /// image's bytes without a whole-file lock, which some NFS servers
    /// enforce as a mandatory lock.
    #[default]
    ByteRange,
    /// The whole file (`l_start` 0, `l_len` 0: up to any end).
    Full,
}

/// The OFD lock an open image takes and gives back: its byte range and
/// whether it is shared (read) or exclusive (write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageLock {
    start: libc::off_t,
    len: libc::off_t,
    shared: bool,
}

impl ImageLock {
    /// The lock for an image of `size` bytes (see [`LockGranularity`]).
    fn new(granularity: LockGranularity, size: u64, shared: bool) -> Self {
        let len = match granularity {
            LockGranularity::Full => 0,
            // 0 (to any end) when the size does not fit, as for Full.
            LockGranularity::ByteRange => libc::off_t::try_from(size).unwrap_or(0),
        };
        ImageLock {
            start: 0,
            len,
            shared,
        }
    }

    /// Sets (`locked`) or clears the lock on `file` without waiting.
    /// `Ok(false)` when another open file description holds a conflicting
    /// lock.
    fn set(&self, file: &File, locked: bool) -> std::io::Result<bool> {
        let l_type = match (locked, self.shared) {
            (false, _) => libc::F_UNLCK,
            (true, true) => libc::F_RDLCK,
            (true, false) => libc::F_WRLCK,
        };
        let fl = libc::flock {
            l_type: l_type as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: self.start,
            l_len: self.len,
            // Must be 0 for OFD locks.
            l_pid: 0,
        };
        // SAFETY: fcntl(F_OFD_SETLK) takes a file descriptor, which `file`
        // owns and keeps open for the duration of the call, and reads the
        // `flock` it points at, which lives on this stack frame for the
        // duration of the call; it writes no memory.
        let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        if ret == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
            _ => Err(err),
        }
    }
}

/// Checks that `[offset, offset + len)` lies inside a disk of `size` bytes.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> Result<(), DiskError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DiskError::OutOfRange { offset, len, size }),
    }
}

/// Opens `path` detecting the format (qcow2 magic "QFI\xfb" → qcow2, else
/// raw) and locks it (exclusive, or shared when read-only).
pub fn open_disk(path: &Path, opts: &DiskOptions) -> Result<Box<dyn DiskImage>, DiskError> {
    open_disk_with_format(path, None, opts)
}

/// Same as [`open_disk`] but with an explicit format ("raw" | "qcow2").
pub fn open_disk_with_format(
    path: &Path,
    format: Option<&str>,
    opts: &DiskOptions,
) -> Result<Box<dyn DiskImage>, DiskError> {
    open_with_depth(path, format, opts, 0)
}

/// The format of an image, named or probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Raw,
    Qcow2,
}

fn parse_format(name: &str) -> Result<Format, DiskError> {
    match name {
        "raw" => Ok(Format::Raw),
        "qcow2" => Ok(Format::Qcow2),
        other => Err(DiskError::UnknownFormat(other.to_string())),
    }
}

/// Opens an image that is `depth` levels down a backing chain.
pub(crate) fn open_with_depth(
    path: &Path,
    format: Option<&str>,
    opts: &DiskOptions,
    depth: u32,
) -> Result<Box<dyn DiskImage>, DiskError> {
    if depth > MAX_BACKING_DEPTH {
        return Err(DiskError::BackingTooDeep);
    }
    let named = format.map(parse_format).transpose()?;
    let file = open_file(path, opts)?;
    let mut file = file::HostFile::new(file, opts.direct);
    // Reading the head before the lock is harmless: nothing is written
    // (nor trusted beyond sizing the lock) until the lock is held.
    let head = read_head(&file).map_err(|e| wrap(path, e))?;
    let lock = ImageLock::new(
        opts.lock_granularity,
        lock_size(&file, &head).map_err(|e| wrap(path, e))?,
        opts.readonly,
    );
    lock_file(file.file(), path, &lock)?;
    file.set_lock(lock);
    let format = match named {
        Some(f) => f,
        None => probe(&head),
    };
    let image: Box<dyn DiskImage> = match format {
        Format::Raw => Box::new(raw::RawDisk::new(file, opts).map_err(|e| wrap(path, e))?),
        Format::Qcow2 => {
            Box::new(qcow2::Qcow2Disk::new(file, path, opts, depth).map_err(|e| wrap(path, e))?)
        }
    };
    Ok(image)
}

/// Adds the image path to errors that do not already name one.
fn wrap(path: &Path, e: DiskError) -> DiskError {
    match e {
        e @ (DiskError::Open { .. }
        | DiskError::IsDirectory(_)
        | DiskError::Locked(_)
        | DiskError::DirectUnsupported(_)
        | DiskError::Image { .. }) => e,
        e => DiskError::Image {
            path: path.to_path_buf(),
            source: Box::new(e),
        },
    }
}

fn open_file(path: &Path, opts: &DiskOptions) -> Result<File, DiskError> {
    let meta = std::fs::metadata(path).map_err(|source| DiskError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(DiskError::IsDirectory(path.to_path_buf()));
    }
    let mut oo = OpenOptions::new();
    oo.read(true).write(!opts.readonly);
    if opts.direct {
        oo.custom_flags(libc::O_DIRECT);
    }
    oo.open(path).map_err(|source| {
        if opts.direct && source.raw_os_error() == Some(libc::EINVAL) {
            DiskError::DirectUnsupported(path.to_path_buf())
        } else {
            DiskError::Open {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Takes `lock` on a freshly opened image without waiting; a conflicting
/// lock held elsewhere is [`DiskError::Locked`]. The lock lives as long as
/// the file stays open (or until [`relock_file`] drops it).
fn lock_file(file: &File, path: &Path, lock: &ImageLock) -> Result<(), DiskError> {
    match lock.set(file, true) {
        Ok(true) => Ok(()),
        Ok(false) => Err(DiskError::Locked(path.to_path_buf())),
        Err(source) => Err(DiskError::Open {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Takes (`locked`) or drops the image's lock on a file that is already
/// open, for [`DiskImage::set_locked`]; dropping clears the same range
/// (`F_UNLCK`). Files opened without a lock do nothing.
pub(crate) fn relock_file(file: &file::HostFile, locked: bool) -> Result<(), DiskError> {
    let Some(lock) = file.lock() else {
        return Ok(());
    };
    match lock.set(file.file(), locked) {
        Ok(true) => Ok(()),
        Ok(false) => Err(DiskError::Io(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "the image is locked by another process",
        ))),
        Err(e) => Err(DiskError::Io(e)),
    }
}

/// The image's first aligned block (a full block so this also works
/// under `O_DIRECT`; bytes past the end of a short file read as zeros).
fn read_head(file: &file::HostFile) -> Result<file::AlignedBuf, DiskError> {
    let mut block = file::AlignedBuf::new(ALIGNMENT as usize);
    file.read_at(block.as_mut_slice(), 0)?;
    Ok(block)
}

/// Recognises qcow2 by its magic in the image's first block; anything
/// else is raw.
fn probe(head: &file::AlignedBuf) -> Format {
    if head.as_slice()[..4] == qcow2::MAGIC.to_be_bytes() {
        Format::Qcow2
    } else {
        Format::Raw
    }
}

/// The size a [`LockGranularity::ByteRange`] lock covers, as Cloud
/// Hypervisor sizes it: the larger of the file's length and the virtual
/// disk size (a qcow2 header's `size`, at byte 24).
fn lock_size(file: &file::HostFile, head: &file::AlignedBuf) -> Result<u64, DiskError> {
    let len = file.len()?;
    let virtual_size = match probe(head) {
        Format::Qcow2 => {
            let mut size = [0u8; 8];
            size.copy_from_slice(&head.as_slice()[24..32]);
            u64::from_be_bytes(size)
        }
        Format::Raw => len,
    };
    Ok(len.max(virtual_size))
}

/// A stable identifier for a host file: its device and inode numbers.
pub(crate) fn id_of(file: &File) -> String {
    match file.metadata() {
        Ok(m) => format!("{:x}-{:x}", m.dev(), m.ino()),
        Err(_) => String::from("unknown"),
    }
}

#[cfg(test)]
pub(crate) mod test_util;

#[cfg(test)]
mod lock_tests;
