//! Drives the transport the way a guest driver does, with a fake device and
//! a recording MSI-X group; no KVM involved.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use super::*;
use crate::device::{ActivateError, ActivatedQueue, VirtioInterrupt, VirtioInterruptType};

/// What the fake device saw.
#[derive(Default)]
struct Seen {
    activations: AtomicUsize,
    resets: AtomicUsize,
    acked: Mutex<u64>,
    /// (index, size, desc table) of each activated queue.
    queues: Mutex<Vec<(u16, u16, u64)>>,
    notifies: Mutex<Vec<EventFd>>,
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
}

struct FakeDevice {
    seen: Arc<Seen>,
    fail_activate: bool,
    config: [u8; 8],
}

const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 1;
const MAX_SIZES: [u16; 2] = [256, 64];

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &MAX_SIZES
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn ack_features(&mut self, features: u64) {
        *self.seen.acked.lock().unwrap() = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let (Some(b), Some(&v)) = (self.config.get_mut(offset as usize), data.first()) {
            *b = v;
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::Device("refused".into()));
        }
        self.seen.activations.fetch_add(1, Ordering::SeqCst);
        let mut q = self.seen.queues.lock().unwrap();
        let mut n = self.seen.notifies.lock().unwrap();
        for aq in queues {
            q.push((aq.index, aq.queue.size(), aq.queue.desc_table()));
            n.push(aq.notify);
        }
        *self.seen.interrupt.lock().unwrap() = Some(interrupt);
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.seen.resets.fetch_add(1, Ordering::SeqCst);
        true
    }
    fn name(&self) -> &str {
        "fake"
    }
}

/// Records MSI-X deliveries.
#[derive(Default)]
struct Recorder {
    triggers: Mutex<Vec<u16>>,
}

impl MsiInterruptGroup for Recorder {
    fn update(&self, _v: u16, _a: u64, _d: u32, _m: bool) -> std::io::Result<()> {
        Ok(())
    }
    fn trigger(&self, v: u16) -> std::io::Result<()> {
        self.triggers.lock().unwrap().push(v);
        Ok(())
    }
}

const MEM_SIZE: u64 = 0x10000;
const BAR0: u64 = 0x10_0000_0000;

/// A driver's view of the device: config space, BAR0 and the capabilities
/// found by walking the list.
struct Driver {
    dev: VirtioPciDevice,
    seen: Arc<Seen>,
    msi: Arc<Recorder>,
    /// cfg_type → (config offset of the cap, BAR offset, length).
    caps: Vec<(u8, usize, u64, u32)>,
    msix_cap: usize,
}

fn driver_with(fail_activate: bool) -> Driver {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let seen = Arc::new(Seen::default());
    let fake = FakeDevice {
        seen: seen.clone(),
        fail_activate,
        config: [1, 2, 3, 4, 5, 6, 7, 8],
    };
    assert_eq!(msix_vectors_for(&fake), 3);
    let msi = Arc::new(Recorder::default());
    let mut dev =
        VirtioPciDevice::new(Box::new(fake), GuestMemoryAtomic::new(mem), msi.clone()).unwrap();
    assert_eq!(dev.bar_requests()[0].size, BAR0_SIZE);
    dev.set_bar_base(0, BAR0);
    let mut d = Driver {
        dev,
        seen,
        msi,
        caps: Vec::new(),
        msix_cap: 0,
    };
    d.walk_caps();
    d
}

fn driver() -> Driver {
    driver_with(false)
}

impl Driver {
    fn cfg32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.config_read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn walk_caps(&mut self) {
        let mut p = u64::from(self.cfg32(0x34) as u8);
        while p != 0 {
            let head = self.cfg32(p);
            match head as u8 {
                0x09 => {
                    let cfg_type = (head >> 24) as u8;
                    assert_eq!(self.cfg32(p + 4) as u8, 0, "BAR0");
                    let off = u64::from(self.cfg32(p + 8));
                    let len = self.cfg32(p + 12);
                    self.caps.push((cfg_type, p as usize, off, len));
                }
                0x11 => self.msix_cap = p as usize,
                other => panic!("unexpected capability {other:#x}"),
            }
            p = u64::from((head >> 8) as u8);
        }
    }
    fn cap(&self, cfg_type: u8) -> (usize, u64, u32) {
        let c = self.caps.iter().find(|c| c.0 == cfg_type).unwrap();
        (c.1, c.2, c.3)
    }
    fn read(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.bar_read(0, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }
    fn write(&mut self, off: u64, len: usize, v: u64) {
        self.dev.bar_write(0, off, &v.to_le_bytes()[..len]);
    }
    fn common(&self) -> u64 {
        self.cap(1).1
    }
    fn status(&mut self) -> u8 {
        self.read(self.common() + 0x14, 1) as u8
    }
    fn set_status(&mut self, s: u8) {
        self.write(self.common() + 0x14, 1, u64::from(s));
    }
    fn negotiate(&mut self, features: u64) {
        let c = self.common();
        self.set_status(0);
        self.set_status(1);
        self.set_status(1 | 2);
        self.write(c + 0x08, 4, 0);
        self.write(c + 0x0c, 4, features & 0xffff_ffff);
        self.write(c + 0x08, 4, 1);
        self.write(c + 0x0c, 4, features >> 32);
        self.set_status(1 | 2 | 8);
    }
    fn setup_queue(&mut self, q: u16, size: u16, desc: u64, vector: u16) {
        let c = self.common();
        self.write(c + 0x16, 2, u64::from(q));
        self.write(c + 0x18, 2, u64::from(size));
        self.write(c + 0x1a, 2, u64::from(vector));
        self.write(c + 0x20, 4, desc & 0xffff_ffff);
        self.write(c + 0x24, 4, desc >> 32);
        self.write(c + 0x28, 8, desc + 0x1000);
        self.write(c + 0x30, 8, desc + 0x2000);
        self.write(c + 0x1c, 2, 1);
    }
}

#[test]
fn header_and_capabilities() {
    let mut d = driver();
    assert_eq!(d.cfg32(0), 0x1042_1af4);
    assert_eq!(d.cfg32(8), 0x0100_0001, "class 01/00, revision 1");
    assert_eq!(d.cfg32(0x2c), 0x0040_1af4);
    assert_eq!(d.cfg32(0x10), 0x4, "64-bit memory BAR");
    assert_eq!(d.cfg32(0x14), 0x10);
    let mut types: Vec<u8> = d.caps.iter().map(|c| c.0).collect();
    types.sort_unstable();
    assert_eq!(types, vec![1, 2, 3, 4, 5]);
    assert_eq!(d.cap(1).2, 0x38);
    let (notify_cap, notify_off, notify_len) = d.cap(2);
    assert_eq!(notify_off, NOTIFY_OFFSET);
    assert_eq!(notify_len, 8);
    assert_eq!(d.cfg32(notify_cap as u64 + 16), 4, "notify_off_multiplier");
    assert_eq!(d.cfg32(notify_cap as u64) >> 16 & 0xff, 20, "cap_len");
    // MSI-X: 3 vectors, table and PBA in BAR0.
    let msix = d.msix_cap as u64;
    assert_eq!(d.cfg32(msix) >> 16, 2);
    assert_eq!(d.cfg32(msix + 4), 0x4000);
    assert_eq!(d.cfg32(msix + 8), 0x6000);
    // Device config goes to the device.
    let dev_cfg = d.cap(4).1;
    assert_eq!(d.read(dev_cfg, 4), 0x0403_0201);
    d.write(dev_cfg + 1, 1, 0x99);
    assert_eq!(d.read(dev_cfg, 2), 0x9901);
    let evts = d.dev.ioeventfds(BAR0);
    assert_eq!(
        evts.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![BAR0 + 0x3000, BAR0 + 0x3004]
    );
    assert!(d.dev.ioeventfds(u64::MAX - 0x3000).len() < 2);
}

#[test]
fn driver_brings_device_up_and_resets_it() {
    let mut d = driver();
    let c = d.common();
    // Device features in two halves.
    d.write(c, 4, 0);
    assert_eq!(d.read(c + 4, 4), FEATURES & 0xffff_ffff);
    d.write(c, 4, 1);
    assert_eq!(d.read(c + 4, 4), FEATURES >> 32);
    d.write(c, 4, 2);
    assert_eq!(d.read(c + 4, 4), 0);
    assert_eq!(d.read(c + 0x12, 2), 2, "num_queues");
    d.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(d.status(), 1 | 2 | 8);
    assert_eq!(
        *d.seen.acked.lock().unwrap(),
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    );
    // Driver features are frozen after FEATURES_OK.
    d.write(c + 0x08, 4, 0);
    d.write(c + 0x0c, 4, 0xffff_ffff);
    assert_eq!(d.read(c + 0x0c, 4), VIRTIO_RING_F_EVENT_IDX);

    d.write(c + 0x16, 2, 0);
    assert_eq!(d.read(c + 0x18, 2), 256, "max size by default");
    assert_eq!(d.read(c + 0x1e, 2), 0, "queue_notify_off");
    d.write(c + 0x10, 2, 0);
    assert_eq!(d.read(c + 0x10, 2), 0);
    d.setup_queue(0, 16, 0x1000, 1);
    assert_eq!(d.read(c + 0x18, 2), 16);
    assert_eq!(d.read(c + 0x1a, 2), 1);
    assert_eq!(d.read(c + 0x1c, 2), 1);
    assert_eq!(d.read(c + 0x20, 8), 0x1000);
    assert_eq!(d.read(c + 0x28, 4), 0x2000);
    d.write(c + 0x16, 2, 1);
    assert_eq!(d.read(c + 0x1e, 2), 1);
    assert_eq!(d.read(c + 0x1c, 2), 0, "queue 1 stays disabled");

    d.set_status(1 | 2 | 8 | 4);
    assert_eq!(d.status(), 1 | 2 | 8 | 4);
    assert!(d.dev.is_activated());
    assert_eq!(d.seen.activations.load(Ordering::SeqCst), 1);
    assert_eq!(*d.seen.queues.lock().unwrap(), vec![(0, 16, 0x1000)]);
    // Queue setup is frozen while running.
    d.write(c + 0x16, 2, 0);
    d.write(c + 0x18, 2, 32);
    assert_eq!(d.read(c + 0x18, 2), 16);

    // A trapped notify write kicks the eventfd the device got.
    d.write(NOTIFY_OFFSET, 2, 0);
    assert_eq!(d.seen.notifies.lock().unwrap()[0].read().unwrap(), 1);
    d.write(NOTIFY_OFFSET + 4 * 7, 2, 7); // no such queue
                                          // ISR is read-to-clear; MSI-X disabled so nothing is delivered yet.
    let irq = d.seen.interrupt.lock().unwrap().clone().unwrap();
    irq.trigger(VirtioInterruptType::Queue(0)).unwrap();
    irq.trigger(VirtioInterruptType::Config).unwrap();
    assert!(irq.trigger(VirtioInterruptType::Queue(2)).is_err());
    assert_eq!(d.read(ISR_OFFSET, 1), 3);
    assert_eq!(d.read(ISR_OFFSET, 1), 0);
    assert!(d.msi.triggers.lock().unwrap().is_empty());
    // Enable MSI-X, program and unmask vector 1: the pending queue
    // interrupt is delivered, later ones go straight through.
    let msix = d.msix_cap as u64;
    d.dev.config_write(msix + 2, &0x8000u16.to_le_bytes());
    d.write(MSIX_TABLE_OFFSET + 16, 8, 0xfee0_0000);
    d.write(MSIX_TABLE_OFFSET + 24, 4, 0x30);
    d.write(MSIX_TABLE_OFFSET + 28, 4, 0);
    assert_eq!(*d.msi.triggers.lock().unwrap(), vec![1]);
    irq.trigger(VirtioInterruptType::Queue(0)).unwrap();
    assert_eq!(*d.msi.triggers.lock().unwrap(), vec![1, 1]);
    // Vector 0 (config) is still masked: pending in the PBA.
    irq.trigger(VirtioInterruptType::Config).unwrap();
    assert_eq!(d.read(MSIX_PBA_OFFSET, 8), 0b001);

    d.set_status(0);
    assert_eq!(d.status(), 0);
    assert!(!d.dev.is_activated());
    assert_eq!(d.seen.resets.load(Ordering::SeqCst), 1);
    d.write(c + 0x16, 2, 0);
    assert_eq!(d.read(c + 0x18, 2), 256);
    assert_eq!(d.read(c + 0x1a, 2), 0xffff);
    assert_eq!(d.read(c + 0x1c, 2), 0);
    assert_eq!(d.read(c + 0x10, 2), 0xffff);
    // And it can be brought up again.
    d.negotiate(VIRTIO_F_VERSION_1);
    d.setup_queue(1, 64, 0x4000, 2);
    d.set_status(1 | 2 | 8 | 4);
    assert_eq!(d.seen.activations.load(Ordering::SeqCst), 2);
    assert_eq!(d.seen.queues.lock().unwrap()[1], (1, 64, 0x4000));
}

#[test]
fn feature_negotiation_failures() {
    let mut d = driver();
    d.negotiate(VIRTIO_F_VERSION_1 | (1 << 40));
    assert_eq!(d.status() & STATUS_FEATURES_OK, 0, "not a subset");
    d.negotiate(1);
    assert_eq!(d.status() & STATUS_FEATURES_OK, 0, "VERSION_1 missing");
    // DRIVER_OK without FEATURES_OK: refused, NEEDS_RESET, no activation.
    d.set_status(1 | 2 | 4);
    assert_eq!(d.status(), 1 | 2 | STATUS_NEEDS_RESET);
    assert_eq!(d.seen.activations.load(Ordering::SeqCst), 0);
    // Clearing bits is ignored; a reset clears NEEDS_RESET.
    d.set_status(1);
    assert_eq!(d.status() & 2, 2);
    d.set_status(0);
    assert_eq!(d.status(), 0);
}

#[test]
fn invalid_queues_and_failed_activation_need_reset() {
    let mut d = driver();
    d.negotiate(VIRTIO_F_VERSION_1);
    let c = d.common();
    d.write(c + 0x16, 2, 0);
    for bad in [0u64, 3, 512, 0xffff] {
        d.write(c + 0x18, 2, bad);
        assert_eq!(d.read(c + 0x18, 2), 256, "size {bad} rejected");
    }
    // Misaligned descriptor table: ignored.
    d.write(c + 0x20, 4, 0x1001);
    assert_eq!(d.read(c + 0x20, 4), 0);
    // Descriptor table outside guest memory.
    d.setup_queue(0, 256, MEM_SIZE - 0x100, 0);
    d.set_status(1 | 2 | 8 | 4);
    assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
    assert_eq!(d.seen.activations.load(Ordering::SeqCst), 0);
    d.set_status(0);
    assert_eq!(d.status(), 0);

    let mut d = driver_with(true);
    d.negotiate(VIRTIO_F_VERSION_1);
    d.setup_queue(0, 16, 0x1000, 0);
    d.set_status(1 | 2 | 8 | 4);
    assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
    assert!(!d.dev.is_activated());
}

#[test]
fn hostile_accesses_never_panic() {
    let mut d = driver();
    let c = d.common();
    // Out-of-range queue_select: size reads 0, vector NO_VECTOR, writes ignored.
    d.write(c + 0x16, 2, 0xffff);
    assert_eq!(d.read(c + 0x18, 2), 0);
    assert_eq!(d.read(c + 0x1a, 2), 0xffff);
    for off in (0x18..0x38).step_by(2) {
        d.write(c + off, 2, 0x1234);
    }
    assert_eq!(d.read(c + 0x16, 2), 0xffff);
    d.write(c + 0x16, 2, 0);
    // Vectors out of range read back NO_VECTOR.
    d.write(c + 0x1a, 2, 3);
    assert_eq!(d.read(c + 0x1a, 2), 0xffff);
    d.write(c + 0x10, 2, 100);
    assert_eq!(d.read(c + 0x10, 2), 0xffff);
    // Read-only fields.
    d.write(c + 0x12, 2, 9);
    d.write(c + 0x15, 1, 9);
    d.write(c + 0x04, 4, 0);
    assert_eq!(d.read(c + 0x12, 2), 2);
    assert_eq!(d.read(c + 0x15, 1), 0);
    // Every width at every offset of BAR0 (and past it) and other BARs.
    for off in (0..BAR0_SIZE + 64).step_by(3) {
        for len in [0usize, 1, 2, 3, 4, 8] {
            let mut b = [0u8; 8];
            d.dev.bar_read(0, off, &mut b[..len]);
            if off != c + 0x14 {
                d.dev.bar_write(0, off, &[0x5a; 8][..len]);
            }
        }
    }
    d.dev.bar_read(0, u64::MAX, &mut [0u8; 8]);
    d.dev.bar_write(0, u64::MAX - 1, &[1; 8]);
    d.dev.bar_read(3, 0, &mut [0u8; 4]);
    d.dev.bar_write(5, 0, &[1; 4]);
    // Config space, every width and offset, including the PCI_CFG window.
    for off in 0..0x1010u64 {
        for len in [1usize, 2, 4] {
            let mut b = [0u8; 4];
            d.dev.config_read(off, &mut b[..len]);
            d.dev.config_write(off, &[0xff; 4][..len]);
        }
    }
    d.dev.config_read(u64::MAX, &mut [0u8; 4]);
    d.dev.config_write(u64::MAX - 2, &[0; 4]);
    // The device still resets cleanly.
    d.set_status(0);
    assert_eq!(d.status(), 0);
}

#[test]
fn pci_cfg_capability_window() {
    let mut d = driver();
    let (cap, _, _) = d.cap(5);
    let cap = cap as u64;
    let c = d.common();
    d.set_status(1);
    // bar 0, offset = device_status, length 1.
    d.dev.config_write(cap + 4, &[0]);
    d.dev
        .config_write(cap + 8, &(c as u32 + 0x14).to_le_bytes());
    d.dev.config_write(cap + 12, &1u32.to_le_bytes());
    assert_eq!(d.cfg32(cap + 16) & 0xff, 1);
    d.dev.config_write(cap + 16, &[3]);
    assert_eq!(d.status(), 3);
    // A notification through the window kicks queue 1's eventfd.
    d.dev
        .config_write(cap + 8, &(NOTIFY_OFFSET as u32 + 4).to_le_bytes());
    d.dev.config_write(cap + 12, &2u32.to_le_bytes());
    d.dev.config_write(cap + 16, &1u16.to_le_bytes());
    assert_eq!(d.dev.ioeventfds(BAR0)[1].1.read().unwrap(), 1);
    // Bad selections (misaligned, bad length, other BAR) do nothing.
    d.dev
        .config_write(cap + 8, &(c as u32 + 0x15).to_le_bytes());
    d.dev.config_write(cap + 16, &[0xff, 0xff]);
    d.dev.config_write(cap + 12, &3u32.to_le_bytes());
    d.dev.config_write(cap + 16, &[0xff]);
    d.dev.config_write(cap + 4, &[1]);
    d.dev.config_write(cap + 12, &1u32.to_le_bytes());
    d.dev.config_write(cap + 16, &[0xff]);
    assert_eq!(d.status(), 3);
}

#[test]
fn bar_reprogram_is_reported() {
    let mut d = driver();
    assert_eq!(d.dev.bar0_base(), Some(BAR0));
    assert!(d.dev.config_write(0x10, &[0xff; 4]).is_empty());
    assert_eq!(d.cfg32(0x10), !(BAR0_SIZE as u32 - 1) | 4);
    assert!(d.dev.config_write(0x10, &4u32.to_le_bytes()).is_empty());
    let moved = d.dev.config_write(0x14, &0x20u32.to_le_bytes());
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].old_base, BAR0);
    assert_eq!(moved[0].new_base, 0x20_0000_0000);
    assert_eq!(d.dev.bar0_base(), Some(0x20_0000_0000));
}
