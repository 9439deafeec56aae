//! qcow2 image parsing and I/O: the input is a small control prefix and a
//! qcow2 file, written to a scratch file and opened with
//! `open_disk_with_format(.., Some("qcow2"), ..)` (header, extensions, L1,
//! refcounts, backing chain); if it opens, a few reads/writes/discards run
//! at offsets the prefix chooses (L2 lookups, allocation, copy-on-write).
//!
//! Input layout: `flags: u8`, `nops: u8` (at most 16 used), `nops` ops of
//! 12 bytes (`kind: u8`, `len: u24 LE`, `offset: u64 LE`), then the image.
//!
//! Backing files are only ever opened read-only. Names that are absolute or
//! climb out with `..` are skipped so the fuzzer never opens host files:
//! relative names resolve in the scratch directory, which holds only the
//! image itself and a 64 KiB raw file called `b`.

#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use chv_fuzz::scratch_dir;
use libfuzzer_sys::fuzz_target;
use virtio_devices::block::disk::qcow2::Header;
use virtio_devices::block::disk::{open_disk_with_format, DiskImage, DiskOptions};

/// Most bytes Qcow2Disk reads as the header area (largest cluster).
const MAX_HEAD: usize = 1 << 21;
/// Most ops run per input.
const MAX_OPS: usize = 16;
/// Bytes per encoded op.
const OP_LEN: usize = 12;
/// Longest transfer of one op.
const MAX_IO: usize = 256 * 1024;
/// Size of the raw backing file `b`.
const BACKING_LEN: usize = 64 * 1024;

/// flags bit 0: open read-only.
const F_READONLY: u8 = 1;

/// Creates the raw backing file `b` once.
fn scratch() -> &'static Path {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY.get_or_init(|| {
        let dir = scratch_dir();
        let data: Vec<u8> = (0..BACKING_LEN).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("b"), data).expect("backing file");
        dir.to_path_buf()
    })
}

/// Whether a backing name stays inside the scratch directory.
fn confined(name: &str) -> bool {
    let p = Path::new(name);
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn run_op(disk: &mut dyn DiskImage, op: &[u8], buf: &mut [u8]) {
    let kind = op[0];
    let len = usize::from(op[1]) | usize::from(op[2]) << 8 | usize::from(op[3]) << 16;
    let len = len.min(MAX_IO);
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&op[4..12]);
    let raw = u64::from_le_bytes(raw);
    // Bit 7 of kind: use the offset as is, else keep it inside the disk.
    let offset = if kind & 0x80 != 0 {
        raw
    } else {
        raw % disk.size().saturating_add(1)
    };
    let data = &mut buf[..len];
    match kind & 0x7 {
        0 | 1 => {
            let _ = disk.read_at(data, offset);
        }
        2 | 3 => {
            data.fill(kind.wrapping_mul(31) | 1);
            let _ = disk.write_at(data, offset);
        }
        4 => {
            let _ = disk.discard(offset, len as u64);
        }
        5 => {
            let _ = disk.write_zeroes(offset, len as u64, kind & 0x8 != 0);
        }
        6 => {
            let _ = disk.flush();
        }
        _ => {
            let _ = disk.size();
        }
    }
}

fn run(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let flags = data[0];
    let nops = usize::from(data[1]).min(MAX_OPS);
    let ops_end = 2 + nops * OP_LEN;
    if data.len() < ops_end {
        return;
    }
    let (ops, image) = (&data[2..ops_end], &data[ops_end..]);

    // Refuse images whose backing name could leave the scratch directory.
    let head = &image[..image.len().min(MAX_HEAD)];
    if let Ok(h) = Header::parse(head, image.len() as u64) {
        if h.backing_file.as_deref().is_some_and(|n| !confined(n)) {
            return;
        }
    }

    let path = scratch().join("img.qcow2");
    if std::fs::write(&path, image).is_err() {
        return;
    }
    let opts = DiskOptions {
        readonly: flags & F_READONLY != 0,
        direct: false,
        ..Default::default()
    };
    let Ok(mut disk) = open_disk_with_format(&path, Some("qcow2"), &opts) else {
        return;
    };
    let mut buf = vec![0u8; MAX_IO];
    for op in ops.chunks_exact(OP_LEN) {
        run_op(disk.as_mut(), op, &mut buf);
    }
}

fuzz_target!(|data: &[u8]| {
    run(data);
});
