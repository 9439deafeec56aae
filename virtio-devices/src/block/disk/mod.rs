//! Disk image formats behind virtio-blk: raw files and qcow2.
//!
//! `open_disk` detects the format, takes an advisory `flock` so two VMMs
//! cannot write one image, and hands back a [`DiskImage`] that the block
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
    lock_file(&file, path, opts.readonly)?;
    let file = file::HostFile::new(file, opts.direct);
    let format = match named {
        Some(f) => f,
        None => probe(&file).map_err(|e| wrap(path, e))?,
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

/// Takes a non-blocking advisory lock: exclusive for writers, shared for
/// readers. The lock lives as long as the file stays open.
fn lock_file(file: &File, path: &Path, shared: bool) -> Result<(), DiskError> {
    let op = if shared { libc::LOCK_SH } else { libc::LOCK_EX } | libc::LOCK_NB;
    // SAFETY: flock only takes a file descriptor, which `file` owns and
    // keeps open for the duration of the call; no memory is passed.
    let ret = unsafe { libc::flock(file.as_raw_fd(), op) };
    if ret == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(DiskError::Locked(path.to_path_buf()))
    } else {
        Err(DiskError::Open {
            path: path.to_path_buf(),
            source: err,
        })
    }
}

/// Takes (`Some(shared)`) or drops (`None`) the advisory lock on an image
/// file that is already open, for [`DiskImage::set_locked`].
pub(crate) fn relock_file(file: &File, shared: Option<bool>) -> Result<(), DiskError> {
    let op = match shared {
        Some(true) => libc::LOCK_SH | libc::LOCK_NB,
        Some(false) => libc::LOCK_EX | libc::LOCK_NB,
        None => libc::LOCK_UN,
    };
    // SAFETY: flock only takes a file descriptor, which `file` owns and
    // keeps open for the duration of the call; no memory is passed.
    let ret = unsafe { libc::flock(file.as_raw_fd(), op) };
    if ret == 0 {
        Ok(())
    } else {
        Err(DiskError::Io(std::io::Error::last_os_error()))
    }
}

/// Reads the first bytes to recognise qcow2; anything else is raw.
fn probe(file: &file::HostFile) -> Result<Format, DiskError> {
    // A full aligned block so this also works under O_DIRECT; bytes past
    // the end of a short file read as zeros.
    let mut block = file::AlignedBuf::new(ALIGNMENT as usize);
    file.read_at(block.as_mut_slice(), 0)?;
    if block.as_slice()[..4] == qcow2::MAGIC.to_be_bytes() {
        Ok(Format::Qcow2)
    } else {
        Ok(Format::Raw)
    }
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
