//! In-process tests of virtio-blk against mock driver queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;

use super::disk::{DiskError, DiskImage};
use super::*;
use crate::device::{VirtioDevice, VirtioInterruptType};
use crate::worker::testutil::{TestQueue, TestVm, DATA};

const HDR: u64 = DATA;
const BUF: u64 = DATA + 0x1000;
const BUF2: u64 = DATA + 0x20_0000;
const STATUS: u64 = DATA + 0x800;

/// (operation, offset, length, unmap) as the disk saw them.
type OpLog = Arc<Mutex<Vec<(&'static str, u64, u64, bool)>>>;

/// An in-memory disk that records what the device asked of it.
#[derive(Clone)]
struct MemDisk {
    data: Arc<Mutex<Vec<u8>>>,
    flushes: Arc<AtomicU64>,
    ops: OpLog,
    discard: bool,
}

impl MemDisk {
    fn new(sectors: usize, discard: bool) -> Self {
        MemDisk {
            data: Arc::new(Mutex::new(vec![0u8; sectors * 512])),
            flushes: Arc::default(),
            ops: Arc::default(),
            discard,
        }
    }
}

impl DiskImage for MemDisk {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let d = self.data.lock().unwrap();
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        let mut d = self.data.lock().unwrap();
        let o = offset as usize;
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.ops
            .lock()
            .unwrap()
            .push(("discard", offset, len, false));
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), DiskError> {
        self.ops
            .lock()
            .unwrap()
            .push(("zeroes", offset, len, unmap));
        let mut d = self.data.lock().unwrap();
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
    fn supports_discard(&self) -> bool {
        self.discard
    }
    fn id_basis(&self) -> String {
        "803-1234abcd".into()
    }
}

struct Rig {
    vm: TestVm,
    blk: VirtioBlock,
    tq: Vec<TestQueue>,
    done: u16,
}

impl Rig {
    fn new(disk: Box<dyn DiskImage>, opts: BlockOptions) -> Self {
        let vm = TestVm::new();
        let mut blk = VirtioBlock::new(disk, opts).unwrap();
        blk.ack_features(blk.features());
        let n = blk.queue_max_sizes().len() as u16;
        let (tq, aq) = vm.queues(n, 16);
        blk.activate(vm.atomic.clone(), vm.interrupt.clone(), aq)
            .unwrap();
        Rig {
            vm,
            blk,
            tq,
            done: 0,
        }
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.vm.write(HDR, &h);
        self.vm.write(STATUS, &[0xff]);
    }

    /// Submits a chain on queue 0; returns (used len, status byte).
    fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> (u32, u8) {
        let head = self.tq[0].add_chain(bufs);
        self.tq[0].notify();
        self.done += 1;
        assert!(self.tq[0].wait_used(self.done), "no completion");
        let (id, len) = self.tq[0].used(self.done - 1);
        assert_eq!(id, u32::from(head));
        (len, self.vm.read(STATUS, 1)[0])
    }

    /// A standard request: header, data (direction `write`), status.
    fn request(&mut self, kind: u32, sector: u64, data: Option<(u64, u32, bool)>) -> (u32, u8) {
        self.header(kind, sector);
        let mut bufs = vec![(HDR, 16, false)];
        bufs.extend(data);
        bufs.push((STATUS, 1, true));
        self.submit(&bufs)
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn write_read_round_trip_and_counters() {
    let disk = MemDisk::new(64, false);
    let mut rig = Rig::new(Box::new(disk.clone()), BlockOptions::default());
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
    rig.vm.write(BUF, &pattern[..512]);
    rig.vm.write(BUF2, &pattern[512..]);
    rig.header(VIRTIO_BLK_T_OUT, 2);
    let r = rig.submit(&[
        (HDR, 16, false),
        (BUF, 512, false),
        (BUF2, 512, false),
        (STATUS, 1, true),
    ]);
    assert_eq!(r, (1, OK));
    assert_eq!(&disk.data.lock().unwrap()[1024..2048], &pattern[..]);

    // Read back into one buffer that also holds the status byte.
    rig.header(VIRTIO_BLK_T_IN, 2);
    let r = rig.submit(&[(HDR, 16, false), (BUF + 0x4000, 1025, true)]);
    assert_eq!(r.0, 1025);
    assert_eq!(rig.vm.read(BUF + 0x4000, 1024), pattern);
    assert_eq!(rig.vm.read(BUF + 0x4000 + 1024, 1)[0], OK);

    let c = rig.blk.counters().snapshot();
    assert_eq!((c.read_ops, c.read_bytes), (1, 1024));
    assert_eq!((c.write_ops, c.write_bytes), (1, 1024));
    assert!(rig
        .vm
        .interrupt
        .seen
        .lock()
        .unwrap()
        .contains(&VirtioInterruptType::Queue(0)));
    assert!(rig.blk.reset());
}

#[test]
fn flush_get_id_and_unknown() {
    let disk = MemDisk::new(8, false);
    let opts = BlockOptions {
        serial: Some("SERIAL-42".into()),
        ..Default::default()
    };
    let mut rig = Rig::new(Box::new(disk.clone()), opts);
    assert_eq!(rig.request(VIRTIO_BLK_T_FLUSH, 0, None), (1, OK));
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 1);
    rig.vm.write(BUF, &[0xaa; 20]);
    assert_eq!(
        rig.request(VIRTIO_BLK_T_GET_ID, 0, Some((BUF, 20, true))),
        (21, OK)
    );
    assert_eq!(&rig.vm.read(BUF, 20)[..10], b"SERIAL-42\0");
    assert_eq!(rig.request(99, 0, None), (1, UNSUPP));
    assert_eq!(rig.blk.counters().snapshot().flush_ops, 1);

    // Without a serial the image's id basis is used.
    let mut rig = Rig::new(Box::new(MemDisk::new(8, false)), BlockOptions::default());
    let r = rig.request(VIRTIO_BLK_T_GET_ID, 0, Some((BUF, 64, true)));
    assert_eq!(r, (21, OK));
    assert_eq!(&rig.vm.read(BUF, 13), b"803-1234abcd\0");
    let long = BlockOptions {
        serial: Some("x".repeat(21)),
        ..Default::default()
    };
    assert!(VirtioBlock::new(Box::new(MemDisk::new(8, false)), long).is_err());
}

#[test]
fn readonly_and_out_of_range() {
    let disk = MemDisk::new(8, true);
    let opts = BlockOptions {
        readonly: true,
        ..Default::default()
    };
    let mut rig = Rig::new(Box::new(disk.clone()), opts);
    let f = rig.blk.features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    rig.vm.write(BUF, &[1u8; 512]);
    let r = rig.request(VIRTIO_BLK_T_OUT, 0, Some((BUF, 512, false)));
    assert_eq!(r, (1, IOERR));
    assert!(disk.data.lock().unwrap().iter().all(|&b| b == 0));
    // Last sector is fine, one past is not, and huge sectors do not overflow.
    let r = rig.request(VIRTIO_BLK_T_IN, 7, Some((BUF, 512, true)));
    assert_eq!(r, (513, OK));
    let r = rig.request(VIRTIO_BLK_T_IN, 7, Some((BUF, 1024, true)));
    assert_eq!(r.1, IOERR);
    let r = rig.request(VIRTIO_BLK_T_IN, u64::MAX / 256, Some((BUF, 512, true)));
    assert_eq!(r.1, IOERR);
    assert_eq!(rig.blk.counters().snapshot().errors, 3);
}

fn segment(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..].copy_from_slice(&flags.to_le_bytes());
    s
}

#[test]
fn discard_and_write_zeroes() {
    let disk = MemDisk::new(64, true);
    disk.data.lock().unwrap().fill(0x55);
    let mut rig = Rig::new(Box::new(disk.clone()), BlockOptions::default());
    let f = rig.blk.features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);

    let mut segs = segment(4, 2, 0).to_vec();
    segs.extend(segment(10, 1, 0));
    rig.vm.write(BUF, &segs);
    let r = rig.request(VIRTIO_BLK_T_DISCARD, 0, Some((BUF, 32, false)));
    assert_eq!(r, (1, OK));
    rig.vm
        .write(BUF, &segment(1, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP));
    let r = rig.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((BUF, 16, false)));
    assert_eq!(r, (1, OK));
    assert_eq!(
        *disk.ops.lock().unwrap(),
        vec![
            ("discard", 2048, 1024, false),
            ("discard", 5120, 512, false),
            ("zeroes", 512, 512, true)
        ]
    );
    assert!(disk.data.lock().unwrap()[512..1024].iter().all(|&b| b == 0));

    // Unmap on a discard and reserved flags are unsupported.
    rig.vm
        .write(BUF, &segment(1, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP));
    let r = rig.request(VIRTIO_BLK_T_DISCARD, 0, Some((BUF, 16, false)));
    assert_eq!(r.1, UNSUPP);
    rig.vm.write(BUF, &segment(1, 1, 4));
    let r = rig.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((BUF, 16, false)));
    assert_eq!(r.1, UNSUPP);
    // Out of range, oversized, malformed segment lists.
    rig.vm.write(BUF, &segment(63, 2, 0));
    let r = rig.request(VIRTIO_BLK_T_DISCARD, 0, Some((BUF, 16, false)));
    assert_eq!(r.1, IOERR);
    rig.vm.write(BUF, &segment(0, MAX_DISCARD_SECTORS + 1, 0));
    let r = rig.request(VIRTIO_BLK_T_DISCARD, 0, Some((BUF, 16, false)));
    assert_eq!(r.1, IOERR);
    let r = rig.request(VIRTIO_BLK_T_DISCARD, 0, Some((BUF, 15, false)));
    assert_eq!(r.1, IOERR);
    let r = rig.request(VIRTIO_BLK_T_DISCARD, 0, None);
    assert_eq!(r.1, IOERR);
    assert_eq!(disk.ops.lock().unwrap().len(), 3);
    assert_eq!(rig.blk.counters().snapshot().discard_ops, 2);

    // A disk without discard support answers UNSUPP.
    let mut rig = Rig::new(Box::new(MemDisk::new(8, false)), BlockOptions::default());
    rig.vm.write(BUF, &segment(0, 1, 0));
    let r = rig.request(VIRTIO_BLK_T_DISCARD, 0, Some((BUF, 16, false)));
    assert_eq!(r.1, UNSUPP);
}

#[test]
fn hostile_chains_never_panic() {
    let disk = MemDisk::new(8, false);
    let mut rig = Rig::new(Box::new(disk.clone()), BlockOptions::default());
    // Only a status byte: no header.
    rig.vm.write(STATUS, &[0xff]);
    assert_eq!(rig.submit(&[(STATUS, 1, true)]), (1, IOERR));
    // Header device-writable.
    rig.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        rig.submit(&[(HDR, 16, true), (STATUS, 1, true)]),
        (1, IOERR)
    );
    // Short header.
    rig.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        rig.submit(&[(HDR, 8, false), (STATUS, 1, true)]),
        (1, IOERR)
    );
    // No writable descriptor at all: dropped.
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(rig.submit(&[(HDR, 16, false)]).0, 0);
    // Zero-length status descriptor: dropped.
    assert_eq!(rig.submit(&[(HDR, 16, false), (STATUS, 0, true)]).0, 0);
    // Readable descriptor after a writable one: dropped.
    rig.header(VIRTIO_BLK_T_IN, 0);
    let r = rig.submit(&[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, false)]);
    assert_eq!(r, (0, 0xff));
    // IN with readable data; OUT with writable data; partial sectors.
    assert_eq!(
        rig.request(VIRTIO_BLK_T_IN, 0, Some((BUF, 512, false))).1,
        IOERR
    );
    assert_eq!(
        rig.request(VIRTIO_BLK_T_OUT, 0, Some((BUF, 512, true))).1,
        IOERR
    );
    assert_eq!(
        rig.request(VIRTIO_BLK_T_OUT, 0, Some((BUF, 100, false))).1,
        IOERR
    );
    assert_eq!(
        rig.request(VIRTIO_BLK_T_IN, 0, Some((BUF, 513, true))).1,
        IOERR
    );
    // Data outside guest memory: dropped.
    rig.header(VIRTIO_BLK_T_IN, 0);
    let r = rig.submit(&[
        (HDR, 16, false),
        (0xfff_f000, 0x2000, true),
        (STATUS, 1, true),
    ]);
    assert_eq!(r, (0, 0xff));
    let r = rig.submit(&[
        (HDR, 16, false),
        (u64::MAX - 10, 512, true),
        (STATUS, 1, true),
    ]);
    assert_eq!(r.0, 0);
    assert!(disk.data.lock().unwrap().iter().all(|&b| b == 0));

    // A descriptor loop (0 -> 1 -> 0): bounded by the queue size.
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    rig.tq[0].store_raw(0, SplitDescriptor::new(HDR, 16, next, 1));
    rig.tq[0].store_raw(1, SplitDescriptor::new(STATUS, 1, next | 2, 0));
    rig.tq[0].publish(0);
    rig.tq[0].notify();
    rig.done += 1;
    assert!(rig.tq[0].wait_used(rig.done));

    // The device still works afterwards.
    assert_eq!(rig.request(VIRTIO_BLK_T_FLUSH, 0, None), (1, OK));

    // A head index beyond the queue breaks the queue, not the VMM.
    rig.tq[0].publish(500);
    rig.tq[0].notify();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(rig.blk.reset());
}

#[test]
fn multiqueue_config_and_reactivation() {
    let disk = MemDisk::new(16, true);
    let opts = BlockOptions {
        num_queues: 2,
        queue_size: 64,
        ..Default::default()
    };
    let mut rig = Rig::new(Box::new(disk.clone()), opts);
    assert_ne!(rig.blk.features() & (1 << VIRTIO_BLK_F_MQ), 0);
    let cfg = |blk: &VirtioBlock, field: usize, len: usize| {
        let mut b = [0u8; 8];
        blk.read_config(field as u64, &mut b[..len]);
        u64::from_le_bytes(b)
    };
    use std::mem::offset_of;
    type C = virtio_blk_config;
    assert_eq!(cfg(&rig.blk, offset_of!(C, capacity), 8), 16);
    assert_eq!(cfg(&rig.blk, offset_of!(C, seg_max), 4), 62);
    assert_eq!(cfg(&rig.blk, offset_of!(C, blk_size), 4), 512);
    assert_eq!(cfg(&rig.blk, offset_of!(C, num_queues), 2), 2);
    assert_eq!(
        cfg(&rig.blk, offset_of!(C, max_discard_seg), 4),
        u64::from(MAX_DISCARD_SEG)
    );
    assert_eq!(
        cfg(&rig.blk, offset_of!(C, max_write_zeroes_sectors), 4),
        u64::from(MAX_DISCARD_SECTORS)
    );
    assert_eq!(cfg(&rig.blk, offset_of!(C, write_zeroes_may_unmap), 1), 1);
    assert_eq!(cfg(&rig.blk, 1000, 4), 0);

    // A request on queue 1.
    rig.vm.write(BUF, &[9u8; 512]);
    rig.header(VIRTIO_BLK_T_OUT, 3);
    rig.tq[1].add_chain(&[(HDR, 16, false), (BUF, 512, false), (STATUS, 1, true)]);
    rig.tq[1].notify();
    assert!(rig.tq[1].wait_used(1));
    assert_eq!(rig.vm.read(STATUS, 1)[0], OK);

    // Reset joins the worker and gives the disk back; reactivation works.
    assert!(rig.blk.reset());
    let (mut tq, aq) = rig.vm.queues(2, 16);
    rig.blk
        .activate(rig.vm.atomic.clone(), rig.vm.interrupt.clone(), aq)
        .unwrap();
    rig.header(VIRTIO_BLK_T_IN, 3);
    tq[0].add_chain(&[(HDR, 16, false), (BUF2, 512, true), (STATUS, 1, true)]);
    tq[0].notify();
    assert!(tq[0].wait_used(1));
    assert_eq!(rig.vm.read(BUF2, 512), vec![9u8; 512]);
    // Activation needs valid queues.
    assert!(rig.blk.reset());
    let (_, mut aq) = rig.vm.queues(2, 16);
    aq[1].index = 5;
    assert!(rig
        .blk
        .activate(rig.vm.atomic.clone(), rig.vm.interrupt.clone(), aq)
        .is_err());
}

#[test]
fn real_raw_image_round_trip() {
    use super::disk::test_util::TestDir;
    use super::disk::{open_disk, DiskOptions};
    let dir = TestDir::new();
    let path = dir.path().join("disk.raw");
    std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
    let disk = open_disk(&path, &DiskOptions::default()).unwrap();
    let mut rig = Rig::new(disk, BlockOptions::default());
    assert_eq!(rig.blk.capacity(), 128);
    rig.vm.write(BUF, &[0x5a; 4096]);
    let r = rig.request(VIRTIO_BLK_T_OUT, 8, Some((BUF, 4096, false)));
    assert_eq!(r, (1, OK));
    assert_eq!(rig.request(VIRTIO_BLK_T_FLUSH, 0, None), (1, OK));
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[4096..8192].iter().all(|&b| b == 0x5a));
    let r = rig.request(VIRTIO_BLK_T_IN, 8, Some((BUF2, 4096, true)));
    assert_eq!(r, (4097, OK));
    assert_eq!(rig.vm.read(BUF2, 4096), vec![0x5a; 4096]);
    assert!(rig.blk.reset());
}

mod rate_limit;
