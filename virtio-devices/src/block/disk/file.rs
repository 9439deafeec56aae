//! Positioned I/O on an image file, with `O_DIRECT` support.
//!
//! Under `O_DIRECT` the kernel wants buffers, offsets and lengths aligned;
//! unaligned requests go through an aligned bounce buffer (read-modify-write
//! for writes). Reads past the end of the file return zeros, which is what
//! both raw and qcow2 (sparse tails) need.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::ImageLock;

/// Buffer, offset and length alignment used for `O_DIRECT` I/O.
pub const ALIGNMENT: u64 = 4096;

/// Largest bounce buffer used for one step of unaligned direct I/O.
const BOUNCE_MAX: u64 = 1 << 20;

/// A zero-filled byte buffer whose start is aligned to [`ALIGNMENT`].
pub(crate) struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes starting at an aligned address.
    pub(crate) fn new(len: usize) -> Self {
        let align = ALIGNMENT as usize;
        let storage = vec![0u8; len + align];
        let misalign = storage.as_ptr() as usize % align;
        let start = if misalign == 0 { 0 } else { align - misalign };
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    /// The aligned bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The aligned bytes, mutably.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn errno_to_io(e: vmm_sys_util::errno::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

/// An open image file plus whether it was opened with `O_DIRECT` and the
/// lock it holds.
pub(crate) struct HostFile {
    file: File,
    direct: bool,
    lock: Option<ImageLock>,
}

impl HostFile {
    /// Wraps an open file (not locked yet).
    pub(crate) fn new(file: File, direct: bool) -> Self {
        HostFile {
            file,
            direct,
            lock: None,
        }
    }

    /// Records the lock taken on the file, for [`super::relock_file`].
    pub(crate) fn set_lock(&mut self, lock: ImageLock) {
        self.lock = Some(lock);
    }

    /// The lock the file holds (when locked), if any was taken.
    pub(crate) fn lock(&self) -> Option<&ImageLock> {
        self.lock.as_ref()
    }

    /// The underlying file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Current length of the host file.
    pub(crate) fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// fsync: data and metadata.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Deallocates a range without changing the file size.
    pub(crate) fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len).map_err(errno_to_io)
    }

    /// Zeroes a range (allocated) without changing the file size.
    pub(crate) fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(&self.file, FallocateMode::ZeroRange, true, offset, len).map_err(errno_to_io)
    }

    fn is_aligned(&self, ptr: *const u8, len: usize, offset: u64) -> bool {
        (ptr as usize).is_multiple_of(ALIGNMENT as usize)
            && (len as u64).is_multiple_of(ALIGNMENT)
            && offset.is_multiple_of(ALIGNMENT)
    }

    /// Fills `buf` from `offset`; bytes past the end of the file are zeros.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| invalid("read range overflows"))?;
        if !self.direct || self.is_aligned(buf.as_ptr(), buf.len(), offset) {
            return self.read_plain(buf, offset);
        }
        let mut pos = offset;
        while pos < end {
            let win_start = pos - pos % ALIGNMENT;
            let win_end = align_up(end)?.min(win_start + BOUNCE_MAX);
            let mut bounce = AlignedBuf::new((win_end - win_start) as usize);
            self.read_plain(bounce.as_mut_slice(), win_start)?;
            let upto = end.min(win_end);
            let dst = &mut buf[(pos - offset) as usize..(upto - offset) as usize];
            dst.copy_from_slice(
                &bounce.as_slice()[(pos - win_start) as usize..(upto - win_start) as usize],
            );
            pos = upto;
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`, extending the file if needed.
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| invalid("write range overflows"))?;
        if !self.direct || self.is_aligned(buf.as_ptr(), buf.len(), offset) {
            return self.file.write_all_at(buf, offset);
        }
        let old_len = self.len()?;
        let mut pos = offset;
        while pos < end {
            let win_start = pos - pos % ALIGNMENT;
            let win_end = align_up(end)?.min(win_start + BOUNCE_MAX);
            let mut bounce = AlignedBuf::new((win_end - win_start) as usize);
            // Read-modify-write keeps the bytes around the request.
            self.read_plain(bounce.as_mut_slice(), win_start)?;
            let upto = end.min(win_end);
            bounce.as_mut_slice()[(pos - win_start) as usize..(upto - win_start) as usize]
                .copy_from_slice(&buf[(pos - offset) as usize..(upto - offset) as usize]);
            self.file.write_all_at(bounce.as_slice(), win_start)?;
            pos = upto;
        }
        // The aligned write may have grown the file past the request; put
        // the length back where a buffered write would have left it.
        let want = old_len.max(end);
        if align_up(end)? > want {
            self.file.set_len(want)?;
        }
        Ok(())
    }

    fn read_plain(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset
                .checked_add(done as u64)
                .ok_or_else(|| invalid("read range overflows"))?;
            match self.file.read_at(&mut buf[done..], pos) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }
}

fn align_up(v: u64) -> io::Result<u64> {
    v.checked_add(ALIGNMENT - 1)
        .map(|x| x - x % ALIGNMENT)
        .ok_or_else(|| invalid("offset overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned() {
        for len in [0usize, 1, 512, 4096, 10000] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGNMENT as usize, 0);
            assert_eq!(b.as_slice().len(), len);
        }
    }

    #[test]
    fn reads_past_eof_are_zero() {
        let t = vmm_sys_util::tempfile::TempFile::new().unwrap();
        t.as_file().write_all_at(&[7u8; 10], 0).unwrap();
        let f = HostFile::new(t.as_file().try_clone().unwrap(), false);
        let mut buf = [1u8; 20];
        f.read_at(&mut buf, 5).unwrap();
        assert_eq!(&buf[..5], &[7u8; 5]);
        assert_eq!(&buf[5..], &[0u8; 15]);
        assert!(f.read_at(&mut buf, u64::MAX - 3).is_err());
    }
}
