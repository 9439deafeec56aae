//! Image locks: OFD `fcntl` locks as Cloud Hypervisor takes them. Every
//! open here is its own open file description, so two opens in this one
//! process see each other's locks as two processes would.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::test_util::{have_qemu_img, qemu_img_ok, TestDir};
use super::{open_disk, DiskError, DiskOptions, LockGranularity};

fn opts(readonly: bool, lock_granularity: LockGranularity) -> DiskOptions {
    DiskOptions {
        readonly,
        direct: false,
        lock_granularity,
    }
}

const GRANULARITIES: [LockGranularity; 2] = [LockGranularity::ByteRange, LockGranularity::Full];

fn make_raw(dir: &TestDir, name: &str, size: u64) -> PathBuf {
    let p = dir.path().join(name);
    File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// The type of an OFD lock another open file description holds that a
/// write lock on `[start, start + len)` would conflict with
/// (`F_OFD_GETLK`), or `None`.
fn lock_held(path: &Path, start: i64, len: i64) -> Option<i32> {
    let f = File::open(path).unwrap();
    let mut fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    };
    // SAFETY: `f` is open for the call and `fl` is a valid flock the call
    // reads and writes, living on this stack frame.
    let ret = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
    (i32::from(fl.l_type) != libc::F_UNLCK).then_some(i32::from(fl.l_type))
}

#[test]
fn writers_conflict_with_either_granularity() {
    let dir = TestDir::new();
    let p = make_raw(&dir, "w.raw", 1 << 20);
    for first in GRANULARITIES {
        for second in GRANULARITIES {
            let _d = open_disk(&p, &opts(false, first)).unwrap();
            let err = open_disk(&p, &opts(false, second)).err().unwrap();
            assert!(
                matches!(err, DiskError::Locked(ref q) if q == &p),
                "{first:?} then {second:?}: {err}"
            );
            assert!(err.to_string().contains("w.raw"), "{err}");
            // A reader does not get in beside a writer either.
            let err = open_disk(&p, &opts(true, second)).err().unwrap();
            assert!(matches!(err, DiskError::Locked(_)), "{err}");
        }
    }
}

#[test]
fn readers_share_and_keep_writers_out() {
    let dir = TestDir::new();
    let p = make_raw(&dir, "r.raw", 1 << 20);
    for first in GRANULARITIES {
        for second in GRANULARITIES {
            let _a = open_disk(&p, &opts(true, first)).unwrap();
            let _b = open_disk(&p, &opts(true, second)).unwrap();
            assert_eq!(lock_held(&p, 0, 0), Some(libc::F_RDLCK));
            let err = open_disk(&p, &opts(false, second)).err().unwrap();
            assert!(matches!(err, DiskError::Locked(_)), "{err}");
        }
    }
    // All dropped: nothing is left locked.
    assert_eq!(lock_held(&p, 0, 0), None);
}

#[test]
fn lock_ranges_follow_the_granularity() {
    let dir = TestDir::new();
    let size = 3 * 4096;
    let p = make_raw(&dir, "g.raw", size);
    let d = open_disk(&p, &opts(false, LockGranularity::ByteRange)).unwrap();
    assert_eq!(lock_held(&p, 0, 1), Some(libc::F_WRLCK));
    assert_eq!(lock_held(&p, size as i64 - 1, 1), Some(libc::F_WRLCK));
    // QEMU's lock bytes lie inside any image of some size.
    assert_eq!(lock_held(&p, 100, 1), Some(libc::F_WRLCK));
    assert_eq!(lock_held(&p, 200, 1), Some(libc::F_WRLCK));
    assert_eq!(lock_held(&p, size as i64, 0), None);
    drop(d);
    let _d = open_disk(&p, &opts(false, LockGranularity::Full)).unwrap();
    assert_eq!(lock_held(&p, size as i64, 1), Some(libc::F_WRLCK));
    assert_eq!(lock_held(&p, 1 << 50, 1), Some(libc::F_WRLCK));
}

#[test]
fn byte_range_covers_a_qcow2_virtual_size() {
    if !have_qemu_img() {
        return;
    }
    let dir = TestDir::new();
    let p = dir.path().join("v.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "64M"]);
    let file_len = std::fs::metadata(&p).unwrap().len() as i64;
    assert!(file_len < 64 << 20);
    let _d = open_disk(&p, &opts(false, LockGranularity::ByteRange)).unwrap();
    assert_eq!(lock_held(&p, (64 << 20) - 1, 1), Some(libc::F_WRLCK));
    assert_eq!(lock_held(&p, 64 << 20, 0), None);
}

#[test]
fn an_empty_image_is_locked_whole() {
    let dir = TestDir::new();
    let p = make_raw(&dir, "e.raw", 0);
    let _d = open_disk(&p, &opts(false, LockGranularity::ByteRange)).unwrap();
    assert_eq!(lock_held(&p, 0, 0), Some(libc::F_WRLCK));
    let err = open_disk(&p, &opts(false, LockGranularity::ByteRange))
        .err()
        .unwrap();
    assert!(matches!(err, DiskError::Locked(_)), "{err}");
}

#[test]
fn unlocking_hands_the_image_over_and_relocking_takes_it_back() {
    let dir = TestDir::new();
    let p = make_raw(&dir, "m.raw", 1 << 20);
    for g in GRANULARITIES {
        let mut src = open_disk(&p, &opts(false, g)).unwrap();
        src.set_locked(false).unwrap();
        assert_eq!(lock_held(&p, 0, 0), None, "{g:?}: still locked");
        // The receiver gets in while the sender keeps the file open ...
        let dst = open_disk(&p, &opts(false, g)).unwrap();
        // ... and the sender cannot take it back while the receiver has it.
        let err = src.set_locked(true).err().unwrap();
        assert!(err.to_string().contains("locked"), "{err}");
        drop(dst);
        // A failed hand-over: the sender locks again and keeps others out.
        src.set_locked(true).unwrap();
        let err = open_disk(&p, &opts(false, g)).err().unwrap();
        assert!(matches!(err, DiskError::Locked(_)), "{err}");
        let err = open_disk(&p, &opts(true, g)).err().unwrap();
        assert!(matches!(err, DiskError::Locked(_)), "{err}");
    }
}

#[test]
fn a_read_only_disk_relocks_shared() {
    let dir = TestDir::new();
    let p = make_raw(&dir, "s.raw", 1 << 20);
    let mut a = open_disk(&p, &opts(true, LockGranularity::ByteRange)).unwrap();
    a.set_locked(false).unwrap();
    let writer = open_disk(&p, &opts(false, LockGranularity::ByteRange)).unwrap();
    assert!(a.set_locked(true).is_err());
    drop(writer);
    a.set_locked(true).unwrap();
    assert_eq!(lock_held(&p, 0, 0), Some(libc::F_RDLCK));
    let _b = open_disk(&p, &opts(true, LockGranularity::Full)).unwrap();
}

#[test]
fn a_qcow2_overlay_locks_its_backing_file_shared() {
    if !have_qemu_img() {
        return;
    }
    let dir = TestDir::new();
    let base = dir.path().join("base.raw");
    let top = dir.path().join("top.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "raw", base.to_str().unwrap(), "1M"]);
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "raw",
        top.to_str().unwrap(),
    ]);
    let _d = open_disk(&top, &opts(false, LockGranularity::Full)).unwrap();
    assert_eq!(lock_held(&base, 0, 0), Some(libc::F_RDLCK));
    assert_eq!(lock_held(&top, 0, 0), Some(libc::F_WRLCK));
    let err = open_disk(&base, &opts(false, LockGranularity::Full))
        .err()
        .unwrap();
    assert!(matches!(err, DiskError::Locked(_)), "{err}");
}
