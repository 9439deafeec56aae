//! qcow2 tests against images made and checked by `qemu-img`.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::super::test_util::{have_qemu_img, qemu_img, qemu_img_ok, TestDir};
use super::super::{
    open_disk, open_disk_with_format, DiskError, DiskImage, DiskOptions, LockGranularity,
};

const RW: DiskOptions = DiskOptions {
    readonly: false,
    direct: false,
    lock_granularity: LockGranularity::ByteRange,
};
const RO: DiskOptions = DiskOptions {
    readonly: true,
    direct: false,
    lock_granularity: LockGranularity::ByteRange,
};

fn create(dir: &TestDir, name: &str, opts: &[&str], size: &str) -> PathBuf {
    let p = dir.path().join(name);
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(opts);
    let ps = p.to_str().unwrap().to_string();
    args.push(&ps);
    args.push(size);
    qemu_img_ok(&args);
    p
}

/// `qemu-img check` must report neither errors nor leaks (exit 0).
fn check(p: &Path) {
    let (ok, out) = qemu_img(&["check", p.to_str().unwrap()]);
    assert!(ok, "qemu-img check failed:\n{out}");
    assert!(!out.contains("leaked"), "{out}");
}

/// The guest-visible bytes according to qemu.
fn convert_raw(p: &Path) -> Vec<u8> {
    let out = p.with_extension("converted.raw");
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        p.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect()
}

fn write_both(d: &mut dyn DiskImage, model: &mut [u8], off: usize, data: &[u8]) {
    d.write_at(data, off as u64).unwrap();
    model[off..off + data.len()].copy_from_slice(data);
}

fn read_all(d: &mut dyn DiskImage) -> Vec<u8> {
    let mut all = vec![0u8; d.size() as usize];
    // Odd-sized reads cross cluster boundaries.
    for (i, chunk) in all.chunks_mut(70001).enumerate() {
        d.read_at(chunk, i as u64 * 70001).unwrap();
    }
    all
}

/// Writes at awkward places, then checks our reads, qemu's view and
/// `qemu-img check`, also after reopening.
fn exercise(p: &Path, model: &mut Vec<u8>) {
    {
        let mut d = open_disk(p, &RW).unwrap();
        assert_eq!(d.size() as usize, model.len());
        let size = model.len();
        let cs = 65536;
        write_both(d.as_mut(), model, 0, &pattern(512, 1));
        write_both(d.as_mut(), model, cs - 100, &pattern(300, 2));
        write_both(d.as_mut(), model, 3 * cs + 7, &pattern(2 * cs + 11, 3));
        write_both(d.as_mut(), model, 1 << 20, &pattern(cs, 4));
        write_both(d.as_mut(), model, size - 1000, &pattern(1000, 5));
        // Far away: a second L2 table.
        write_both(d.as_mut(), model, 600 << 20, &pattern(4096, 6));
        // Rewrite in place.
        write_both(d.as_mut(), model, 50, &pattern(100, 7));
        assert!(matches!(
            d.write_at(&[1, 2], size as u64 - 1),
            Err(DiskError::OutOfRange { .. })
        ));
        d.flush().unwrap();
        assert_eq!(&read_all(d.as_mut()), model);
    }
    check(p);
    assert_eq!(&convert_raw(p), model);
    let mut d = open_disk(p, &RO).unwrap();
    assert_eq!(&read_all(d.as_mut()), model);
    assert!(matches!(d.write_at(&[1], 0), Err(DiskError::ReadOnly)));
}

#[test]
fn v3_and_v2_writes_match_qemu() {
    if !have_qemu_img() {
        return;
    }
    let dir = TestDir::new();
    for (name, opts) in [
        ("v3.qcow2", vec![]),
        ("v2.qcow2", vec!["-o", "compat=0.10"]),
    ] {
        let p = create(&dir, name, &opts, "1G");
        let mut model = vec![0u8; 1 << 30];
        exercise(&p, &mut model);
    }
}

#[test]
fn refcount_widths_and_table_growth() {
    if !have_qemu_img() {
        return;
    }
    let dir = TestDir::new();
    for bits in ["1", "8", "16", "64"] {
        // 512-byte clusters: small refcount blocks, so writing a few MiB
        // needs new blocks and a bigger refcount table.
        let o = format!("cluster_size=512,refcount_bits={bits}");
        let p = create(&dir, &format!("r{bits}.qcow2"), &["-o", &o], "8M");
        let mut model = vec![0u8; 8 << 20];
        let rt_before = header_u64(&p, 48);
        {
            let mut d = open_disk(&p, &RW).unwrap();
            write_both(d.as_mut(), &mut model, 100, &pattern(3 << 20, 8));
            write_both(d.as_mut(), &mut model, (8 << 20) - 700, &pattern(700, 9));
            d.flush().unwrap();
            assert_eq!(read_all(d.as_mut()), model);
        }
        check(&p);
        assert_eq!(convert_raw(&p), model, "refcount_bits={bits}");
        if bits == "64" {
            assert_ne!(header_u64(&p, 48), rt_before, "refcount table moved");
        }
    }
}

fn header_u64(p: &Path, at: u64) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open(p)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    u64::from_be_bytes(b)
}

#[test]
fn direct_io_small_clusters() {
    if !have_qemu_img() {
        return;
    }
    let dir = TestDir::new();
    let p = create(&dir, "direct.qcow2", &["-o", "cluster_size=512"], "2M");
    let opts = DiskOptions {
        readonly: false,
        direct: true,
        lock_granularity: LockGranularity::ByteRange,
    };
    let mut model = vec![0u8; 2 << 20];
    {
        let mut d = match open_disk(&p, &opts) {
            Ok(d) => d,
            Err(DiskError::DirectUnsupported(_)) => {
                println!("skipping: O_DIRECT unsupported here");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        write_both(d.as_mut(), &mut model, 3, &pattern(1500, 18));
        write_both(d.as_mut(), &mut model, 1 << 20, &pattern(70000, 19));
        write_both(d.as_mut(), &mut model, (2 << 20) - 10, &pattern(10, 20));
        d.flush().unwrap();
        assert_eq!(read_all(d.as_mut()), model);
    }
    check(&p);
    assert_eq!(convert_raw(&p), model);
}

#[test]
fn backing_files_read_and_copy_on_write() {
    if !have_qemu_img() {
        return;
    }
    let dir = TestDir::new();
    // Raw backing smaller than the overlay.
    let base_raw = dir.path().join("base.raw");
    let base_data = pattern(3 << 20, 10);
    std::fs::write(&base_raw, &base_data).unwrap();
    // qcow2 backing with some data written by qemu.
    let base_q = create(&dir, "base.qcow2", &[], "4M");
    let base_q_data = {
        let mut d = open_disk(&base_q, &RW).unwrap();
        d.write_at(&pattern(4 << 20, 11), 0).unwrap();
        read_all(d.as_mut())
    };
    for (name, back, fmt, mut model, extra) in [
        (
            "over-raw.qcow2",
            "base.raw",
            "raw",
            base_data.clone(),
            vec![],
        ),
        (
            "over-q.qcow2",
            "base.qcow2",
            "qcow2",
            base_q_data.clone(),
            vec![],
        ),
        (
            "over-v2.qcow2",
            "base.raw",
            "raw",
            base_data.clone(),
            vec!["-o", "compat=0.10"],
        ),
    ] {
        model.resize(4 << 20, 0);
        let mut opts = vec!["-b", back, "-F", fmt];
        opts.extend(extra);
        let p = create(&dir, name, &opts, "4M");
        {
            let mut d = open_disk(&p, &RW).unwrap();
            assert_eq!(read_all(d.as_mut()), model, "{name} before writes");
            write_both(d.as_mut(), &mut model, 65536 + 5, &pattern(10, 12));
            write_both(d.as_mut(), &mut model, (3 << 20) - 30, &pattern(100, 13));
            write_both(d.as_mut(), &mut model, 7 * 65536, &pattern(65536, 14));
            // discard over a backing file must read zeros afterwards.
            d.discard(9 * 65536, 2 * 65536 + 10).unwrap();
            model[9 * 65536..11 * 65536 + 10].fill(0);
            d.write_zeroes(12 * 65536 + 1, 65536, false).unwrap();
            model[12 * 65536 + 1..13 * 65536 + 1].fill(0);
            assert_eq!(read_all(d.as_mut()), model, "{name} after writes");
        }
        check(&p);
        assert_eq!(convert_raw(&p), model, "{name}");
        let mut d = open_disk(&p, &RO).unwrap();
        assert_eq!(read_all(d.as_mut()), model, "{name} reopened");
    }
    // The backing files were never written.
    assert_eq!(std::fs::read(&base_raw).unwrap(), base_data);
    check(&base_q);
}

#[test]
fn discard_and_write_zeroes_free_clusters() {
    if !have_qemu_img() {
        return;
    }
    let dir = TestDir::new();
    for (name, opts) in [
        ("d3.qcow2", vec![]),
        ("d2.qcow2", vec!["-o", "compat=0.10"]),
    ] {
        let p = create(&dir, name, &opts, "16M");
        let mut model = vec![0u8; 16 << 20];
        {
            let mut d = open_disk(&p, &RW).unwrap();
            assert!(d.supports_discard());
            write_both(d.as_mut(), &mut model, 0, &pattern(8 << 20, 15));
            d.discard(65536 + 1000, 5 * 65536).unwrap();
            model[65536 + 1000..6 * 65536 + 1000].fill(0);
            d.write_zeroes(1 << 20, 1 << 20, false).unwrap();
            model[1 << 20..2 << 20].fill(0);
            d.write_zeroes(3 << 20, (1 << 20) + 17, true).unwrap();
            model[3 << 20..(4 << 20) + 17].fill(0);
            // Rewrite a zeroed cluster (preallocated zero in v3).
            write_both(d.as_mut(), &mut model, (1 << 20) + 10, &pattern(20, 16));
            // Discarding never-written space is a no-op.
            d.discard(12 << 20, 1 << 20).unwrap();
            d.discard((13 << 20) + 5, 100).unwrap();
            let len = std::fs::metadata(&p).unwrap().len();
            d.write_zeroes((14 << 20) + 5, 100, false).unwrap();
            assert_eq!(std::fs::metadata(&p).unwrap().len(), len, "no allocation");
            assert_eq!(read_all(d.as_mut()), model);
        }
        check(&p);
        assert_eq!(convert_raw(&p), model, "{name}");
    }
}

#[test]
fn locking_and_unsupported_features() {
    if !have_qemu_img() {
        return;
    }
    let dir = TestDir::new();
    let p = create(&dir, "lock.qcow2", &[], "1M");
    {
        let _d = open_disk(&p, &RW).unwrap();
        let e = open_disk(&p, &RW).err().unwrap();
        assert!(matches!(e, DiskError::Locked(_)), "{e}");
    }
    // Compressed clusters: a clear error, not garbage.
    let raw = dir.path().join("c.raw");
    // Compressible data, or qemu stores the clusters uncompressed.
    std::fs::write(&raw, b"chv compressed ".repeat(70000)).unwrap();
    let c = dir.path().join("c.qcow2");
    qemu_img_ok(&[
        "convert",
        "-q",
        "-c",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        c.to_str().unwrap(),
    ]);
    let mut d = open_disk(&c, &RO).unwrap();
    let mut buf = [0u8; 512];
    assert!(matches!(
        d.read_at(&mut buf, 0),
        Err(DiskError::Unsupported(_))
    ));
    // Explicit format: a qcow2 file opened as raw shows its own bytes.
    let d = open_disk_with_format(&c, Some("raw"), &RO).unwrap();
    assert_eq!(d.size(), std::fs::metadata(&c).unwrap().len());
}

#[test]
fn backing_loop_is_refused() {
    if !have_qemu_img() {
        return;
    }
    let dir = TestDir::new();
    let p = create(&dir, "loop.qcow2", &[], "1M");
    qemu_img_ok(&[
        "rebase",
        "-u",
        "-b",
        "loop.qcow2",
        "-F",
        "qcow2",
        p.to_str().unwrap(),
    ]);
    let e = open_disk(&p, &RO).err().unwrap();
    assert!(matches!(e.root(), DiskError::BackingTooDeep), "{e}");
    let e = open_disk(&p, &RW).err().unwrap();
    assert!(matches!(e.root(), DiskError::Locked(_)), "{e}");
    // A missing backing file names it.
    qemu_img_ok(&[
        "rebase",
        "-u",
        "-b",
        "nope.raw",
        "-F",
        "raw",
        p.to_str().unwrap(),
    ]);
    let e = open_disk(&p, &RO).err().unwrap();
    assert!(e.to_string().contains("nope.raw"), "{e}");
}

/// Patches `bytes` at `at` into a fresh copy of a qemu-made image and
/// expects opening to fail.
fn expect_corrupt(dir: &TestDir, name: &str, at: u64, bytes: &[u8]) -> DiskError {
    let p = create(dir, name, &[], "64M");
    {
        // Give it an L2 table and data so every table is populated.
        let mut d = open_disk(&p, &RW).unwrap();
        d.write_at(&[1u8; 4096], 0).unwrap();
    }
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(bytes, at).unwrap();
    drop(f);
    let res = open_disk(&p, &RW);
    match res {
        Ok(_) => panic!("{name}: corrupt image opened"),
        Err(e) => {
            assert!(e.to_string().contains(name), "{name}: {e}");
            e
        }
    }
}

#[test]
fn corrupt_headers_are_errors() {
    if !have_qemu_img() {
        return;
    }
    let dir = TestDir::new();
    let e = expect_corrupt(&dir, "cb.qcow2", 20, &40u32.to_be_bytes());
    assert!(matches!(e.root(), DiskError::Corrupt(_)));
    let e = expect_corrupt(&dir, "ver.qcow2", 4, &7u32.to_be_bytes());
    assert!(matches!(e.root(), DiskError::UnsupportedVersion(7)));
    expect_corrupt(&dir, "l1off.qcow2", 40, &(1u64 << 40).to_be_bytes());
    expect_corrupt(&dir, "l1size.qcow2", 36, &0x4000_0000u32.to_be_bytes());
    let e = expect_corrupt(&dir, "feat.qcow2", 72, &(1u64 << 20).to_be_bytes());
    assert!(matches!(e.root(), DiskError::UnknownFeatures(_)));
    let e = expect_corrupt(&dir, "dirty.qcow2", 72, &1u64.to_be_bytes());
    assert!(e.to_string().contains("dirty"), "{e}");
    expect_corrupt(&dir, "crypt.qcow2", 32, &1u32.to_be_bytes());
    expect_corrupt(&dir, "rcorder.qcow2", 96, &9u32.to_be_bytes());
    // Refcount table entry pointing past EOF.
    let p = create(&dir, "probe.qcow2", &[], "64M");
    let rt = header_u64(&p, 48);
    expect_corrupt(&dir, "rtentry.qcow2", rt, &(1u64 << 40).to_be_bytes());
    // L1 entry pointing past EOF, and one with reserved bits.
    let l1 = header_u64(&p, 40);
    expect_corrupt(
        &dir,
        "l1entry.qcow2",
        l1,
        &((1u64 << 63) | (1 << 40)).to_be_bytes(),
    );
    expect_corrupt(&dir, "l1resv.qcow2", l1, &3u64.to_be_bytes());
    // Truncated to half a header.
    let short = dir.path().join("short.qcow2");
    std::fs::write(&short, b"QFI\xfb\0\0\0\x03").unwrap();
    let e = open_disk(&short, &RW).err().unwrap();
    assert!(matches!(e.root(), DiskError::Corrupt(_)), "{e}");
}

#[test]
fn hostile_l2_entries_are_errors() {
    if !have_qemu_img() {
        return;
    }
    let dir = TestDir::new();
    let p = create(&dir, "l2.qcow2", &[], "64M");
    {
        let mut d = open_disk(&p, &RW).unwrap();
        d.write_at(&[1u8; 4096], 0).unwrap();
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 40).unwrap();
    let l1 = u64::from_be_bytes(b);
    f.read_exact_at(&mut b, l1).unwrap();
    let l2 = u64::from_be_bytes(b) & super::tables::OFFSET_MASK;
    // Data cluster far past the end of the file.
    f.write_all_at(&((1u64 << 63) | (1 << 45)).to_be_bytes(), l2)
        .unwrap();
    // Unaligned data cluster.
    f.write_all_at(&((1u64 << 63) | 0x10200).to_be_bytes(), l2 + 8)
        .unwrap();
    drop(f);
    let mut d = open_disk(&p, &RW).unwrap();
    let mut buf = vec![0u8; 4096];
    for off in [0u64, 65536] {
        assert!(matches!(
            d.read_at(&mut buf, off),
            Err(DiskError::Corrupt(_))
        ));
        assert!(matches!(d.write_at(&buf, off), Err(DiskError::Corrupt(_))));
    }
    assert!(matches!(
        d.read_at(&mut buf, u64::MAX - 10),
        Err(DiskError::OutOfRange { .. })
    ));
    assert!(d.discard(u64::MAX - 10, 100).is_err());
}
