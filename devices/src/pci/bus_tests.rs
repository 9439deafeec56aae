//! Tests of the PCI bus, CF8/CFC and ECAM decoding and BAR moves.

use super::*;
use crate::pci::BarRequest;

/// A device with one 64-bit BAR whose bytes read back their offset.
struct TestDev {
    config: PciConfiguration,
    last_write: Option<(u8, u64, Vec<u8>)>,
}

impl TestDev {
    fn new() -> Self {
        let mut config = PciConfiguration::new(PciHeaderIds {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision_id: 1,
            class_code: 1,
            subclass: 0,
            prog_if: 0,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
        });
        config.add_bar(&REQ).unwrap();
        Self {
            config,
            last_write: None,
        }
    }
}

const REQ: BarRequest = BarRequest {
    index: 0,
    size: 0x4000,
    is_64bit: true,
    prefetchable: false,
};

impl PciDevice for TestDev {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data)
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        self.config.write(offset, data)
    }
    fn bar_read(&mut self, _index: u8, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) {
        self.last_write = Some((index, offset, data.to_vec()));
    }
    fn bar_requests(&self) -> Vec<BarRequest> {
        vec![REQ]
    }
    fn set_bar_base(&mut self, index: u8, base: u64) {
        self.config.set_bar_base(index, base).unwrap();
    }
}

const BASE64: u64 = 0x10_0000_0000;

struct Setup {
    mmio: Arc<Bus>,
    bus: Arc<Mutex<PciBus>>,
    dev: Arc<Mutex<TestDev>>,
    moves: Arc<Mutex<Vec<(u8, BarReprogram)>>>,
}

fn setup() -> Setup {
    let mmio = Arc::new(Bus::new());
    let bus = Arc::new(Mutex::new(PciBus::new(mmio.clone())));
    let mut alloc = PciBarAllocator::new(0xc000_0000, 0xe000_0000, BASE64, BASE64 << 1);
    let dev = Arc::new(Mutex::new(TestDev::new()));
    let info = bus
        .lock()
        .unwrap()
        .add_device(dev.clone(), &mut alloc)
        .unwrap();
    assert_eq!(
        info,
        PciDeviceInfo {
            slot: 1,
            bars: vec![AssignedBar {
                index: 0,
                base: BASE64,
                size: 0x4000
            }]
        }
    );
    let moves = Arc::new(Mutex::new(Vec::new()));
    let m = moves.clone();
    bus.lock()
        .unwrap()
        .set_reprogram_callback(Box::new(move |slot, r| m.lock().unwrap().push((slot, *r))));
    Setup {
        mmio,
        bus,
        dev,
        moves,
    }
}

fn io_read(io: &mut PciConfigIo, port_off: u64, len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len];
    io.read(0xcf8, port_off, &mut d);
    d
}

fn cf8(io: &mut PciConfigIo, v: u32) {
    io.write(0xcf8, 0, &v.to_le_bytes());
}

fn addr(dev: u32, reg: u32) -> u32 {
    0x8000_0000 | (dev << 11) | reg
}

#[test]
fn cf8_cfc_decode() {
    let s = setup();
    let mut io = PciConfigIo::new(s.bus.clone());
    // Linux's type-1 probe: byte write to 0xCFB, then the dword round-trip.
    io.write(0xcf8, 3, &[1]);
    cf8(&mut io, 0x8000_0000);
    assert_eq!(io_read(&mut io, 0, 4), 0x8000_0000u32.to_le_bytes());
    // Host bridge in slot 0.
    assert_eq!(io_read(&mut io, 4, 4), [0x86, 0x80, 0x57, 0x0d]);
    cf8(&mut io, 0x8000_0008);
    assert_eq!(io_read(&mut io, 4, 4)[2..], [0x00, 0x06]);
    // Slot 1: the test device; 1- and 2-byte accesses at byte offsets.
    cf8(&mut io, addr(1, 0));
    assert_eq!(io_read(&mut io, 4, 4), [0xf4, 0x1a, 0x42, 0x10]);
    assert_eq!(io_read(&mut io, 6, 2), [0x42, 0x10]);
    assert_eq!(io_read(&mut io, 7, 1), [0x10]);
    // Crossing the dword or reaching past the port range: all-ones.
    assert_eq!(io_read(&mut io, 6, 4), [0xff; 4]);
    assert_eq!(io_read(&mut io, 2, 4), [0x00, 0x80, 0xff, 0xff]);
    // Empty slot, other functions, other buses.
    cf8(&mut io, addr(2, 0));
    assert_eq!(io_read(&mut io, 4, 4), [0xff; 4]);
    cf8(&mut io, addr(1, 0) | (1 << 8));
    assert_eq!(io_read(&mut io, 4, 4), [0xff; 4]);
    cf8(&mut io, addr(1, 0) | (1 << 16));
    assert_eq!(io_read(&mut io, 4, 4), [0xff; 4]);
    // Enable bit clear: reads all-ones, writes ignored.
    cf8(&mut io, 1 << 11 | 0x04);
    assert_eq!(io_read(&mut io, 4, 4), [0xff; 4]);
    io.write(0xcf8, 4, &[0x06]);
    cf8(&mut io, addr(1, 4));
    assert_eq!(io_read(&mut io, 4, 2), [0, 0]);
    io.write(0xcf8, 4, &[0x06]);
    assert_eq!(io_read(&mut io, 4, 2), [0x06, 0]);
    // Reserved low bits of the address register read as zero.
    cf8(&mut io, addr(1, 0) | 3);
    assert_eq!(io_read(&mut io, 0, 1), [0]);
}

#[test]
fn ecam_decode_and_bar_move() {
    let s = setup();
    let mut ecam = PciConfigMmio::new(s.bus.clone());
    let dev1 = 1u64 << 15;
    let mut d = [0u8; 4];
    ecam.read(0, dev1, &mut d);
    assert_eq!(d, [0xf4, 0x1a, 0x42, 0x10]);
    let mut d2 = [0u8; 2];
    ecam.read(0, dev1 + 2, &mut d2);
    assert_eq!(d2, [0x42, 0x10]);
    // Invalid widths, dword-crossing, other functions: all-ones.
    let mut d8 = [0u8; 8];
    ecam.read(0, dev1, &mut d8);
    assert_eq!(d8, [0xff; 8]);
    ecam.read(0, dev1 + 3, &mut d2);
    assert_eq!(d2, [0xff; 2]);
    ecam.read(0, dev1 | (1 << 12), &mut d);
    assert_eq!(d, [0xff; 4]);
    ecam.read(0, u64::MAX - 3, &mut d);
    assert_eq!(d, [0xff; 4]);
    // Extended space of a present device reads zero.
    ecam.read(0, dev1 + 0x100, &mut d);
    assert_eq!(d, [0; 4]);

    // The BAR is mapped where it was allocated.
    let mut b = [0u8; 1];
    assert!(s.mmio.read(BASE64 + 0x20, &mut b));
    assert_eq!(b[0], 0x20);

    // Sizing does not move it.
    ecam.write(0, dev1 + 0x10, &[0xff; 4]);
    ecam.read(0, dev1 + 0x10, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0xffff_c004);
    ecam.write(0, dev1 + 0x10, &4u32.to_le_bytes());
    assert!(s.moves.lock().unwrap().is_empty());

    // Move it below 4 GiB: low half, then high half.
    ecam.write(0, dev1 + 0x10, &0xc000_4000u32.to_le_bytes());
    ecam.write(0, dev1 + 0x14, &0u32.to_le_bytes());
    let moves = s.moves.lock().unwrap().clone();
    assert_eq!(moves.len(), 2);
    assert_eq!(moves[1].0, 1);
    assert_eq!(moves[1].1.new_base, 0xc000_4000);
    assert!(!s.mmio.read(BASE64 + 0x20, &mut b));
    assert!(!s.mmio.read(BASE64 | 0xc000_4000, &mut b));
    assert!(s.mmio.write(0xc000_4010, &[9]));
    assert_eq!(s.dev.lock().unwrap().last_write, Some((0, 0x10, vec![9])));
}

#[test]
fn bar_move_onto_another_device_is_refused_then_recovers() {
    let s = setup();
    struct Other;
    impl BusDevice for Other {}
    s.mmio
        .insert(Arc::new(Mutex::new(Other)), 0xd000_0000, 0x1000)
        .unwrap();
    let mut bus = s.bus.lock().unwrap();
    bus.config_write(0, 1, 0, 0x10, &0xd000_0000u32.to_le_bytes());
    bus.config_write(0, 1, 0, 0x14, &0u32.to_le_bytes());
    // Overlap: not mapped, but the other device is untouched.
    assert!(s.mmio.read(0xd000_0000, &mut [0u8; 1]));
    bus.config_write(0, 1, 0, 0x10, &0xc000_0000u32.to_le_bytes());
    assert!(s.mmio.read(0xd000_0000, &mut [0u8; 1]));
    let mut b = [0u8; 1];
    assert!(s.mmio.read(0xc000_0001, &mut b));
    assert_eq!(b[0], 1);
    // The reprogram callback saw every move.
    assert_eq!(s.moves.lock().unwrap().len(), 3);
}

#[test]
fn full_bus_and_hostile_accesses() {
    let s = setup();
    let mut alloc = PciBarAllocator::new(0xc000_0000, 0xe000_0000, BASE64 + 0x4000, BASE64 << 1);
    let mut bus = s.bus.lock().unwrap();
    // Two slots already used (host bridge + test device): 30 more fit.
    let mut added = 0;
    let err = loop {
        match bus.add_device(Arc::new(Mutex::new(TestDev::new())), &mut alloc) {
            Ok(_) => added += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(added, 30);
    assert!(matches!(err, PciBusError::NoFreeSlot));
    for off in [0u64, 0xfff, 0x1000, u64::MAX] {
        let mut d = [0u8; 4];
        bus.config_read(0, 31, 0, off, &mut d);
        bus.config_write(0, 31, 0, off, &[0xff; 4]);
        bus.config_write(0, 200, 7, off, &[0xff; 4]);
    }
    drop(bus);
    let mut io = PciConfigIo::new(s.bus.clone());
    for off in 0..8u64 {
        for len in 0..=8 {
            let mut d = vec![0u8; len];
            io.read(0xcf8, off, &mut d);
            io.write(0xcf8, off, &d);
        }
    }
    let mut ecam = PciConfigMmio::new(s.bus.clone());
    ecam.write(0, 0, &[]);
    ecam.read(0, 0, &mut []);
}

#[test]
fn add_device_with_unmappable_bar_fails_cleanly() {
    let mmio = Arc::new(Bus::new());
    struct Other;
    impl BusDevice for Other {}
    mmio.insert(Arc::new(Mutex::new(Other)), BASE64, 0x1000)
        .unwrap();
    let mut bus = PciBus::new(mmio.clone());
    let mut alloc = PciBarAllocator::new(0xc000_0000, 0xe000_0000, BASE64, BASE64 << 1);
    let err = bus
        .add_device(Arc::new(Mutex::new(TestDev::new())), &mut alloc)
        .unwrap_err();
    assert!(matches!(err, PciBusError::Map { index: 0, .. }));
    // The slot stayed free.
    let mut alloc2 = PciBarAllocator::new(0xc000_0000, 0xe000_0000, 0, 0);
    let info = bus
        .add_device(Arc::new(Mutex::new(TestDev::new())), &mut alloc2)
        .unwrap();
    assert_eq!(info.slot, 1);
    assert_eq!(info.bars[0].base, 0xc000_0000);
}

#[test]
fn remove_device_unmaps_its_moved_bar_and_frees_the_slot() {
    let s = setup();
    let mut bus = s.bus.lock().unwrap();
    // The guest moves BAR 0; removal unmaps it where it is now.
    bus.config_write(0, 1, 0, 0x10, &0xd000_0000u32.to_le_bytes());
    bus.config_write(0, 1, 0, 0x14, &[0; 4]);
    let mut d = [0u8; 1];
    assert!(s.mmio.read(0xd000_0010, &mut d));
    assert!(bus.remove_device(0).is_none(), "host bridge stays");
    assert!(bus.remove_device(40).is_none());
    let removed = bus.remove_device(1).expect("device in slot 1");
    assert!(Arc::ptr_eq(&removed, &(s.dev.clone() as SharedPciDevice)));
    assert!(!s.mmio.read(0xd000_0010, &mut d));
    assert!(!s.mmio.read(BASE64, &mut d));
    assert!(bus.remove_device(1).is_none());
    let mut id = [0u8; 2];
    bus.config_read(0, 1, 0, 0, &mut id);
    assert_eq!(id, [0xff, 0xff], "empty slot");
    // The slot is reused by the next device.
    let mut alloc = PciBarAllocator::new(0xc000_0000, 0xe000_0000, BASE64 + 0x4000, BASE64 << 1);
    let info = bus
        .add_device(Arc::new(Mutex::new(TestDev::new())), &mut alloc)
        .unwrap();
    assert_eq!(info.slot, 1);
}
