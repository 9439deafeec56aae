//! Pause/resume and save/restore of a virtio-pci block device driven like
//! a guest driver would, on test guest memory with a recording MSI-X group.

use std::sync::Mutex;
use std::time::Duration;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};

use super::*;
use crate::block::disk::{DiskError, DiskImage};
use crate::block::{BlockOptions, VirtioBlock};
use crate::worker::testutil::{TestQueue, TestVm, DATA};

const BAR0: u64 = 0x10_0000_0000;
const QUEUE_BASE: u64 = 0x1000;
const QSIZE: u16 = 16;
const HDR: u64 = DATA;
const STATUS: u64 = DATA + 0x800;
const BUF: u64 = DATA + 0x1000;
/// Features the test driver accepts (no EVENT_IDX: the shared mock's
/// used ring overlaps the avail ring's `used_event`, so every completion
/// interrupts).
const DRIVER_FEATURES: u64 = VIRTIO_F_VERSION_1;

/// A shared in-memory disk.
#[derive(Clone)]
struct MemDisk(Arc<Mutex<Vec<u8>>>);

impl DiskImage for MemDisk {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let d = self.0.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        let mut d = self.0.lock().unwrap();
        d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
    fn discard(&mut self, _offset: u64, _len: u64) -> Result<(), DiskError> {
        Ok(())
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64, _unmap: bool) -> Result<(), DiskError> {
        Ok(())
    }
    fn supports_discard(&self) -> bool {
        false
    }
    fn id_basis(&self) -> String {
        "memdisk".into()
    }
}

/// Records MSI-X route updates and deliveries.
#[derive(Default)]
struct Msi {
    updates: Mutex<Vec<(u16, u64, u32, bool)>>,
    triggers: Mutex<Vec<u16>>,
}

impl MsiInterruptGroup for Msi {
    fn update(&self, v: u16, a: u64, d: u32, m: bool) -> std::io::Result<()> {
        self.updates.lock().unwrap().push((v, a, d, m));
        Ok(())
    }
    fn trigger(&self, v: u16) -> std::io::Result<()> {
        self.triggers.lock().unwrap().push(v);
        Ok(())
    }
}

/// A block device on the transport plus the guest side of its queue.
struct Rig {
    dev: VirtioPciDevice,
    msi: Arc<Msi>,
    q: TestQueue,
    done: u16,
}

/// A fresh transport around a block device on `disk`, BAR0 placed.
fn build(vm: &TestVm, disk: &MemDisk) -> (VirtioPciDevice, Arc<Msi>) {
    let blk = VirtioBlock::new(Box::new(disk.clone()), BlockOptions::default()).unwrap();
    let msi = Arc::new(Msi::default());
    let mut dev = VirtioPciDevice::new(Box::new(blk), vm.atomic.clone(), msi.clone()).unwrap();
    dev.set_bar_base(0, BAR0);
    (dev, msi)
}

fn w(dev: &mut VirtioPciDevice, off: u64, len: usize, v: u64) {
    dev.bar_write(0, off, &v.to_le_bytes()[..len]);
}

fn r(dev: &mut VirtioPciDevice, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    dev.bar_read(0, off, &mut b[..len]);
    u64::from_le_bytes(b)
}

impl Rig {
    /// Brings the device up like a driver: MSI-X on, vector 1 for queue 0.
    fn new(vm: &TestVm, disk: &MemDisk) -> Self {
        let (mut dev, msi) = build(vm, disk);
        let q = TestQueue::at(
            vm.mem,
            QUEUE_BASE,
            QSIZE,
            EventFd::new(EFD_NONBLOCK).unwrap(),
        );
        let msix_ctl = dev.msix_cap as u64 + 2;
        dev.config_write(msix_ctl, &MSIX_ENABLE.to_le_bytes());
        // Vector 1: address/data, unmasked.
        w(&mut dev, MSIX_TABLE_OFFSET + 16, 8, 0xfee0_0000);
        w(&mut dev, MSIX_TABLE_OFFSET + 24, 4, 0x41);
        w(&mut dev, MSIX_TABLE_OFFSET + 28, 4, 0);
        for s in [1, 3] {
            w(&mut dev, 0x14, 1, s);
        }
        w(&mut dev, 0x08, 4, 0);
        w(&mut dev, 0x0c, 4, DRIVER_FEATURES & 0xffff_ffff);
        w(&mut dev, 0x08, 4, 1);
        w(&mut dev, 0x0c, 4, DRIVER_FEATURES >> 32);
        w(&mut dev, 0x14, 1, 11);
        w(&mut dev, 0x16, 2, 0);
        w(&mut dev, 0x18, 2, u64::from(QSIZE));
        w(&mut dev, 0x1a, 2, 1);
        w(&mut dev, 0x20, 8, q.mock.desc_table_addr().0);
        w(&mut dev, 0x28, 8, q.mock.avail_addr().0);
        w(&mut dev, 0x30, 8, q.used_addr());
        w(&mut dev, 0x1c, 2, 1);
        w(&mut dev, 0x14, 1, 15);
        assert!(dev.is_activated());
        Rig {
            dev,
            msi,
            q,
            done: 0,
        }
    }

    /// Posts a request on queue 0 and notifies through the BAR.
    fn post(&mut self, vm: &TestVm, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        vm.write(HDR, &h);
        vm.write(STATUS, &[0xff]);
        let data_writable = kind == VIRTIO_BLK_T_IN;
        self.q.add_chain(&[
            (HDR, 16, false),
            (BUF, 512, data_writable),
            (STATUS, 1, true),
        ]);
        w(&mut self.dev, NOTIFY_OFFSET, 2, 0);
    }

    /// Waits for the next completion and checks its status.
    fn complete(&mut self, vm: &TestVm) {
        self.done += 1;
        assert!(
            self.q.wait_used(self.done),
            "request {} not completed",
            self.done
        );
        assert_eq!(vm.read(STATUS, 1)[0], VIRTIO_BLK_S_OK as u8);
    }
}

const MSIX_ENABLE: u16 = 1 << 15;

fn disk() -> MemDisk {
    MemDisk(Arc::new(Mutex::new(vec![0u8; 64 * 512])))
}

#[test]
fn pause_resume_keeps_serving_where_it_stopped() {
    let vm = TestVm::new();
    let disk = disk();
    let mut rig = Rig::new(&vm, &disk);
    rig.dev.resume().unwrap(); // not paused: no-op
    assert!(matches!(rig.dev.state(), Err(VirtioPciError::NotPaused)));
    vm.write(BUF, &[0x11; 512]);
    rig.post(&vm, VIRTIO_BLK_T_OUT, 1);
    rig.complete(&vm);

    rig.dev.pause().unwrap();
    rig.dev.pause().unwrap(); // idempotent
    assert!(rig.dev.is_paused());
    let s = rig.dev.state().unwrap();
    assert_eq!((s.queues[0].next_avail, s.queues[0].next_used), (1, 1));
    assert!(!s.queues[0].event_idx);

    // Posted while paused: not served until resumed.
    vm.write(BUF, &[0x22; 512]);
    rig.post(&vm, VIRTIO_BLK_T_OUT, 2);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rig.q.used_idx(), 1);
    rig.dev.resume().unwrap();
    assert!(!rig.dev.is_paused());
    rig.complete(&vm);
    assert_eq!(
        &disk.0.lock().unwrap()[512..1536],
        &[[0x11; 512], [0x22; 512]].concat()[..]
    );
    assert!(rig.msi.triggers.lock().unwrap().contains(&1));
}

#[test]
fn restored_device_continues_the_queue() {
    let vm = TestVm::new();
    let disk = disk();
    let mut rig = Rig::new(&vm, &disk);
    vm.write(BUF, &[0x5a; 512]);
    rig.post(&vm, VIRTIO_BLK_T_OUT, 3);
    rig.complete(&vm);
    rig.dev.pause().unwrap();
    let json = serde_json::to_string(&rig.dev.state().unwrap()).unwrap();
    drop(rig.dev);

    let saved: VirtioPciState = serde_json::from_str(&json).unwrap();
    assert!(saved.activated);
    let (mut dev, msi) = build(&vm, &disk);
    dev.restore(&saved).unwrap();
    assert!(dev.is_activated());
    // MSI-X routes re-reported: vector 1 unmasked with its message.
    assert!(msi
        .updates
        .lock()
        .unwrap()
        .contains(&(1, 0xfee0_0000, 0x41, false)));
    // Transport registers read back as the driver left them.
    assert_eq!(r(&mut dev, 0x14, 1), 15);
    w(&mut dev, 0x16, 2, 0);
    assert_eq!(r(&mut dev, 0x1a, 2), 1);
    assert_eq!(r(&mut dev, 0x20, 8), rig.q.mock.desc_table_addr().0);
    assert_eq!(
        dev.state().err().map(|e| e.to_string()),
        Some(VirtioPciError::NotPaused.to_string())
    );

    // A request posted after the restore is served; the used index goes on.
    rig.dev = dev;
    rig.post(&vm, VIRTIO_BLK_T_IN, 3);
    rig.complete(&vm);
    assert_eq!(rig.q.used_idx(), 2);
    assert_eq!(vm.read(BUF, 512), vec![0x5a; 512]);
    assert!(msi.triggers.lock().unwrap().contains(&1));
}

#[test]
fn inactive_device_round_trips_without_activation() {
    let vm = TestVm::new();
    let disk = disk();
    let (mut dev, _msi) = build(&vm, &disk);
    w(&mut dev, 0x14, 1, 1);
    w(&mut dev, 0x16, 2, 0);
    w(&mut dev, 0x18, 2, 32);
    let saved = dev.state().unwrap();
    let (mut fresh, _msi) = build(&vm, &disk);
    fresh.restore(&saved).unwrap();
    assert!(!fresh.is_activated());
    assert_eq!(r(&mut fresh, 0x18, 2), 32);
    assert_eq!(r(&mut fresh, 0x14, 1), 1);
    assert_eq!(fresh.state().unwrap(), saved);
}

#[test]
fn hostile_state_is_refused_without_change() {
    let vm = TestVm::new();
    let disk = disk();
    let mut rig = Rig::new(&vm, &disk);
    rig.post(&vm, VIRTIO_BLK_T_OUT, 0);
    rig.complete(&vm);
    rig.dev.pause().unwrap();
    let good = serde_json::to_value(rig.dev.state().unwrap()).unwrap();

    let refuse = |what: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        edit(&mut v);
        // Either the JSON no longer parses as a state, or restore refuses.
        let Ok(state) = serde_json::from_value::<VirtioPciState>(v) else {
            return;
        };
        let (mut dev, msi) = build(&vm, &disk);
        let Err(err) = dev.restore(&state) else {
            panic!("{what}: accepted");
        };
        assert!(!err.to_string().is_empty());
        assert!(!dev.is_activated());
        assert!(
            msi.updates.lock().unwrap().is_empty(),
            "{err}: routes touched"
        );
        assert_eq!(r(&mut dev, 0x14, 1), 0, "{err}: status changed");
    };
    refuse("case 1", &|v| v["queues"][0]["size"] = 12.into());
    refuse("case 2", &|v| v["queues"][0]["size"] = 512.into());
    refuse("case 3", &|v| {
        v["queues"][0]["desc_table"] = 0x4000_0000_0000u64.into()
    });
    refuse("case 4", &|v| {
        v["queues"][0]["used_ring"] = (crate::worker::testutil::MEM_SIZE - 8).into()
    });
    refuse("case 5", &|v| v["queues"][0]["msix_vector"] = 9.into());
    refuse("case 6", &|v| v["version"] = 2.into());
    refuse("case 7", &|v| v["device_type"] = 1.into());
    refuse("case 8", &|v| v["driver_features"] = u64::MAX.into());
    refuse("case 9", &|v| v["device_status"] = 0x47.into());
    refuse("case 10", &|v| {
        let q = v["queues"][0].clone();
        v["queues"].as_array_mut().unwrap().push(q);
    });
    refuse("case 11", &|v| {
        v["msix"]["entries"]
            .as_array_mut()
            .unwrap()
            .pop()
            .map(drop)
            .unwrap()
    });
    refuse("case 12", &|v| v["config"]["regs"][0] = 0.into());
    refuse("case 13", &|v| {
        v["config"]["bars"][0]["base"] = 0x20_0000_0000u64.into()
    });
    refuse("case 14", &|v| v["device"]["version"] = 5.into());
    refuse(
        "case 15",
        &|v| v["device"] = serde_json::json!({"version": 1, "acked_features": 0, "cid": 3}),
    );
    refuse("case 16", &|v| v["device"]["capacity"] = 63.into());

    // A disk that changed size under the snapshot.
    let state: VirtioPciState = serde_json::from_value(good.clone()).unwrap();
    let small = MemDisk(Arc::new(Mutex::new(vec![0u8; 32 * 512])));
    let (mut dev, _msi) = build(&vm, &small);
    let err = dev.restore(&state).unwrap_err().to_string();
    assert!(err.contains("sectors"), "{err}");

    // And the unmodified state still restores.
    let (mut dev, _msi) = build(&vm, &disk);
    dev.restore(&state).unwrap();
    assert!(dev.is_activated());
}
