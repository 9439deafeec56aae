//! Raw images: the host file's bytes are the guest's disk, one to one.

use super::file::{AlignedBuf, HostFile};
use super::{check_range, id_of, DiskError, DiskImage, DiskOptions};

/// Bytes written per step when zeros must be written out explicitly.
const ZERO_CHUNK: u64 = 1 << 20;

/// A raw disk image: virtual size is the file size.
pub struct RawDisk {
    file: HostFile,
    size: u64,
    readonly: bool,
    id: String,
}

impl RawDisk {
    /// Wraps an opened (and locked) image file.
    pub(crate) fn new(file: HostFile, opts: &DiskOptions) -> Result<Self, DiskError> {
        let size = file.len()?;
        let id = id_of(file.file());
        Ok(RawDisk {
            file,
            size,
            readonly: opts.readonly,
            id,
        })
    }

    fn writable_range(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        if self.readonly {
            return Err(DiskError::ReadOnly);
        }
        check_range(offset, len, self.size)
    }

    fn write_zero_bytes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        let chunk = AlignedBuf::new(ZERO_CHUNK.min(len) as usize);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK);
            self.file
                .write_at(&chunk.as_slice()[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
}

/// Whether an fallocate error means "this filesystem cannot do that".
fn not_supported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

impl DiskImage for RawDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn set_locked(&mut self, locked: bool) -> Result<(), DiskError> {
        super::relock_file(&self.file, locked)
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        check_range(offset, buf.len() as u64, self.size)?;
        Ok(self.file.read_at(buf, offset)?)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        self.writable_range(offset, buf.len() as u64)?;
        Ok(self.file.write_at(buf, offset)?)
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        if self.readonly {
            return Ok(());
        }
        Ok(self.file.sync()?)
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.writable_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        match self.file.punch_hole(offset, len) {
            Ok(()) => Ok(()),
            // Discard is only a hint: nothing to do where holes are impossible.
            Err(e) if not_supported(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        self.writable_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let fast = if unmap {
            self.file
                .punch_hole(offset, len)
                .or_else(|_| self.file.zero_range(offset, len))
        } else {
            self.file.zero_range(offset, len)
        };
        match fast {
            Ok(()) => Ok(()),
            Err(e) if not_supported(&e) => self.write_zero_bytes(offset, len),
            Err(e) => Err(e.into()),
        }
    }

    fn supports_discard(&self) -> bool {
        !self.readonly
    }

    fn id_basis(&self) -> String {
        self.id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::TestDir;
    use super::super::{open_disk, open_disk_with_format, DiskError, DiskOptions, LockGranularity};
    use std::os::unix::fs::MetadataExt;

    const RW: DiskOptions = DiskOptions {
        readonly: false,
        direct: false,
        lock_granularity: LockGranularity::ByteRange,
    };

    fn make_raw(dir: &TestDir, name: &str, size: u64) -> std::path::PathBuf {
        let p = dir.path().join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn read_write_roundtrip_and_bounds() {
        let dir = TestDir::new();
        let p = make_raw(&dir, "a.raw", 1 << 20);
        let mut d = open_disk(&p, &RW).unwrap();
        assert_eq!(d.size(), 1 << 20);
        let data = pattern(10000, 3);
        d.write_at(&data, 4095).unwrap();
        let mut back = vec![0u8; 10000];
        d.read_at(&mut back, 4095).unwrap();
        assert_eq!(back, data);
        // Last byte is fine, one past is not.
        d.write_at(&[9], (1 << 20) - 1).unwrap();
        assert!(matches!(
            d.write_at(&[9, 9], (1 << 20) - 1),
            Err(DiskError::OutOfRange { .. })
        ));
        let mut b = [0u8; 8];
        assert!(matches!(
            d.read_at(&mut b, u64::MAX - 2),
            Err(DiskError::OutOfRange { .. })
        ));
        d.flush().unwrap();
        assert!(d.supports_discard());
        assert!(!d.id_basis().is_empty());
        drop(d);
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(&on_disk[4095..14095], &data[..]);
        assert_eq!(on_disk.len(), 1 << 20);
    }

    #[test]
    fn readonly_refuses_writes() {
        let dir = TestDir::new();
        let p = make_raw(&dir, "ro.raw", 65536);
        let ro = DiskOptions {
            readonly: true,
            direct: false,
            lock_granularity: LockGranularity::ByteRange,
        };
        let mut d = open_disk_with_format(&p, Some("raw"), &ro).unwrap();
        assert!(matches!(d.write_at(&[1], 0), Err(DiskError::ReadOnly)));
        assert!(matches!(d.discard(0, 512), Err(DiskError::ReadOnly)));
        assert!(matches!(
            d.write_zeroes(0, 512, false),
            Err(DiskError::ReadOnly)
        ));
        let mut b = [1u8; 512];
        d.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [0u8; 512]);
        // Two readers may share the image.
        let _d2 = open_disk(&p, &ro).unwrap();
    }

    #[test]
    fn discard_and_write_zeroes() {
        let dir = TestDir::new();
        let p = make_raw(&dir, "z.raw", 1 << 20);
        let mut d = open_disk(&p, &RW).unwrap();
        d.write_at(&vec![0xaa; 1 << 20], 0).unwrap();
        d.discard(65536, 65536).unwrap();
        d.write_zeroes(300, 700, false).unwrap();
        d.write_zeroes(200000, 5000, true).unwrap();
        let mut all = vec![0u8; 1 << 20];
        d.read_at(&mut all, 0).unwrap();
        assert!(all[300..1000].iter().all(|&b| b == 0));
        assert_eq!(all[299], 0xaa);
        assert_eq!(all[1000], 0xaa);
        assert!(all[200000..205000].iter().all(|&b| b == 0));
        assert_eq!(all[205000], 0xaa);
        // A discarded range reads as zeros on Linux filesystems with holes.
        assert!(all[65536..131072].iter().all(|&b| b == 0));
        assert!(matches!(
            d.discard(1 << 20, 1),
            Err(DiskError::OutOfRange { .. })
        ));
        let blocks = std::fs::metadata(&p).unwrap().blocks();
        assert!(blocks < (1 << 20) / 512, "punched holes free blocks");
    }

    #[test]
    fn second_writer_is_locked_out() {
        let dir = TestDir::new();
        let p = make_raw(&dir, "l.raw", 4096);
        let _d = open_disk(&p, &RW).unwrap();
        let err = open_disk(&p, &RW).err().unwrap();
        assert!(matches!(err, DiskError::Locked(_)), "{err}");
        assert!(err.to_string().contains("l.raw"));
        let ro = DiskOptions {
            readonly: true,
            direct: false,
            lock_granularity: LockGranularity::ByteRange,
        };
        assert!(matches!(open_disk(&p, &ro), Err(DiskError::Locked(_))));
    }

    #[test]
    fn open_errors_are_clear() {
        let dir = TestDir::new();
        let e = open_disk(dir.path(), &RW).err().unwrap();
        assert!(matches!(e, DiskError::IsDirectory(_)), "{e}");
        let missing = dir.path().join("missing.img");
        let e = open_disk(&missing, &RW).err().unwrap();
        assert!(e.to_string().contains("missing.img"), "{e}");
        let p = make_raw(&dir, "f.raw", 4096);
        let e = open_disk_with_format(&p, Some("vmdk"), &RW).err().unwrap();
        assert!(matches!(e, DiskError::UnknownFormat(ref f) if f == "vmdk"));
    }

    #[test]
    fn direct_io_unaligned_requests() {
        let dir = TestDir::new();
        let p = make_raw(&dir, "d.raw", 3 * 4096 + 512);
        let opts = DiskOptions {
            readonly: false,
            direct: true,
            lock_granularity: LockGranularity::ByteRange,
        };
        let mut d = match open_disk(&p, &opts) {
            Ok(d) => d,
            Err(DiskError::DirectUnsupported(_)) => {
                println!("skipping: O_DIRECT unsupported here");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let data = pattern(5000, 9);
        d.write_at(&data, 100).unwrap();
        // Write touching the unaligned tail must not grow the file.
        d.write_at(&[5u8; 700], 3 * 4096 + 512 - 700).unwrap();
        let mut back = vec![0u8; 5000];
        d.read_at(&mut back, 100).unwrap();
        assert_eq!(back, data);
        let mut tail = [0u8; 700];
        d.read_at(&mut tail, 3 * 4096 + 512 - 700).unwrap();
        assert_eq!(tail, [5u8; 700]);
        d.flush().unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 3 * 4096 + 512);
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(&on_disk[100..5100], &data[..]);
        assert_eq!(on_disk[99], 0);
    }
}
