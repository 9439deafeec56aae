//! PCI config space and the virtio-pci transport as a guest reaches them:
//! the input picks up to two `VirtioPciDevice`s around a deterministic
//! dummy virtio device, puts them on a `PciBus` (BARs on an MMIO `Bus`, ECAM
//! there too, CF8/CFC through `PciConfigIo`) and then replays a sequence of
//! guest accesses: config space by ports or ECAM, BAR0 (common config,
//! ISR, device config, notify, MSI-X table/PBA), raw MMIO, and device-side
//! interrupts. The dummy device validates queues like the real ones do
//! (`prepare_queues`) but starts no thread, so runs are deterministic.

#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use chv_fuzz::guest_memory;
use devices::pci::{
    BarReprogram, MsiInterruptGroup, PciBarAllocator, PciBus, PciConfigIo, PciConfigMmio,
    SharedPciDevice,
};
use devices::{Bus, BusDevice};
use libfuzzer_sys::fuzz_target;
use virtio_devices::transport::pci::{
    msix_vectors_for, VirtioPciDevice, BAR0_SIZE, VIRTIO_F_VERSION_1, VIRTIO_PCI_VENDOR_ID,
};
use virtio_devices::worker::prepare_queues;
use virtio_devices::{
    ActivateError, ActivatedQueue, GuestMemory, VirtioDevice, VirtioInterrupt, VirtioInterruptType,
};

/// Where the VMM puts ECAM, and the BAR windows (as in arch's layout).
const ECAM_BASE: u64 = 0xe000_0000;
const ECAM_SIZE: u64 = 0x10_0000;
const MMIO32: (u64, u64) = (0xc000_0000, 0xe000_0000);
const MMIO64: (u64, u64) = (1 << 36, (1 << 36) + (64 << 30));
/// Port of the CF8/CFC pair.
const CF8: u64 = 0xcf8;
/// Most accesses replayed per input.
const MAX_OPS: usize = 512;

/// A virtio device with nothing behind it: fixed features and config
/// bytes, queue validation on activation, optional failures.
struct Dummy {
    sizes: Vec<u16>,
    features: u64,
    config: Vec<u8>,
    fail_activate: bool,
    fail_reset: bool,
    acked: u64,
    active: bool,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        // Entropy, so no real driver-visible config layout is implied.
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn ack_features(&mut self, features: u64) {
        assert_eq!(features & !self.features, 0, "acked unoffered features");
        self.acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get(o).copied())
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let slot = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get_mut(o));
            if let Some(b) = slot {
                *b = v;
            }
        }
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        _interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        assert!(!self.active, "activated twice without reset");
        if self.fail_activate {
            return Err(ActivateError::Device("refused".into()));
        }
        let event_idx = self.acked & (1 << 29) != 0;
        prepare_queues(queues, self.sizes.len(), &mem, event_idx)?;
        self.active = true;
        Ok(())
    }
    fn reset(&mut self) -> bool {
        if self.fail_reset {
            return false;
        }
        self.active = false;
        self.acked = 0;
        true
    }
    fn name(&self) -> &str {
        "dummy"
    }
}

/// Accepts every MSI message; checks vectors stay in range.
struct Msi {
    vectors: u16,
}

impl MsiInterruptGroup for Msi {
    fn update(&self, vector: u16, _address: u64, _data: u32, _masked: bool) -> std::io::Result<()> {
        assert!(vector < self.vectors, "MSI update of vector {vector}");
        Ok(())
    }
    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        assert!(vector < self.vectors, "MSI trigger of vector {vector}");
        Ok(())
    }
}

#[derive(Arbitrary, Debug)]
struct DeviceSpec {
    /// Queue count: 1 + n % 8, except 255 means one too many.
    queues: u8,
    size_log2: Vec<u8>,
    features: u32,
    config: Vec<u8>,
    fail_activate: bool,
    fail_reset: bool,
}

/// Access width: ports take 1/2/4 bytes, MMIO 1..=8 (as KVM exits do).
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Width(u8);

impl Width {
    fn pio(self) -> usize {
        [1, 2, 4][usize::from(self.0 % 3)]
    }
    fn mmio(self) -> usize {
        usize::from(self.0 % 8) + 1
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Select bus/dev/func/reg in 0xCF8 (convenience for the common case).
    Select {
        dev: u8,
        reg: u8,
        other: u16,
    },
    PioRead {
        port: u8,
        width: Width,
    },
    PioWrite {
        port: u8,
        width: Width,
        value: u64,
    },
    EcamRead {
        dev: u8,
        reg: u16,
        width: Width,
    },
    EcamWrite {
        dev: u8,
        reg: u16,
        width: Width,
        value: u64,
    },
    BarRead {
        device: bool,
        offset: u16,
        width: Width,
    },
    BarWrite {
        device: bool,
        offset: u16,
        width: Width,
        value: u64,
    },
    MmioRead {
        addr: u64,
        width: Width,
    },
    MmioWrite {
        addr: u64,
        width: Width,
        value: u64,
    },
    Interrupt {
        device: bool,
        config: bool,
        queue: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    devices: Vec<DeviceSpec>,
    ops: Vec<Op>,
}

fn build(spec: &DeviceSpec, mem: &GuestMemory) -> Option<Arc<Mutex<VirtioPciDevice>>> {
    let n = if spec.queues == 255 {
        257
    } else {
        1 + usize::from(spec.queues % 8)
    };
    let sizes = (0..n)
        .map(|i| {
            let l = spec.size_log2.get(i).copied().unwrap_or(8);
            // 16 (and up) gives an invalid 0 size.
            1u16.checked_shl(u32::from(l % 17)).unwrap_or(0)
        })
        .collect();
    let mut config = spec.config.clone();
    config.truncate(256);
    let dummy = Dummy {
        sizes,
        features: VIRTIO_F_VERSION_1 | u64::from(spec.features),
        config,
        fail_activate: spec.fail_activate,
        fail_reset: spec.fail_reset,
        acked: 0,
        active: false,
    };
    let vectors = msix_vectors_for(&dummy);
    let msi = Arc::new(Msi { vectors });
    let dev = VirtioPciDevice::new(Box::new(dummy), mem.clone(), msi).ok()?;
    Some(Arc::new(Mutex::new(dev)))
}

/// Removes ECAM from the MMIO bus on drop.
struct Unlink<'a>(&'a Bus);

impl Drop for Unlink<'_> {
    fn drop(&mut self) {
        let _ = self.0.remove(ECAM_BASE);
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn value_bytes(value: u64, len: usize) -> Vec<u8> {
    value.to_le_bytes()[..len].to_vec()
}

fn run(input: Input) {
    let mem = guest_memory(false);
    let mmio = Arc::new(Bus::new());
    let pci = Arc::new(Mutex::new(PciBus::new(mmio.clone())));
    let mut ports = PciConfigIo::new(pci.clone());
    let ecam = Arc::new(Mutex::new(PciConfigMmio::new(pci.clone())));
    if mmio.insert(ecam, ECAM_BASE, ECAM_SIZE).is_err() {
        return;
    }
    // ECAM holds the PCI bus, which holds the MMIO bus: break the cycle
    // when this run ends so nothing leaks per iteration.
    let _unlink = Unlink(&mmio);
    let mut alloc = PciBarAllocator::new(MMIO32.0, MMIO32.1, MMIO64.0, MMIO64.1);
    // (slot, transport) of each device added.
    let mut devs: Vec<(u8, Arc<Mutex<VirtioPciDevice>>)> = Vec::new();
    for spec in input.devices.iter().take(2) {
        let Some(dev) = build(spec, &mem) else {
            continue;
        };
        let shared: SharedPciDevice = dev.clone();
        let Ok(info) = lock(&pci).add_device(shared, &mut alloc) else {
            continue;
        };
        devs.push((info.slot, dev));
    }
    if devs.is_empty() {
        return;
    }
    // As the VMM does: on a BAR move, recompute the ioeventfd addresses.
    let by_slot = devs.clone();
    lock(&pci).set_reprogram_callback(Box::new(move |slot, m: &BarReprogram| {
        if let Some((_, d)) = by_slot.iter().find(|(s, _)| *s == slot) {
            let d = lock(d);
            assert_eq!(m.len, BAR0_SIZE, "BAR {} moved with a new size", m.index);
            let _ = d.ioeventfds(m.new_base).len();
        }
    }));
    let pick = |second: bool| &devs[usize::from(second) % devs.len()].1;

    let mut buf = [0u8; 8];
    for op in input.ops.iter().take(MAX_OPS) {
        match *op {
            Op::Select { dev, reg, other } => {
                let a = (1u32 << 31) | (u32::from(dev % 32) << 11) | u32::from(reg);
                // `other` rarely sets bus/function/reserved bits.
                let a = if other & 0xff00 == 0xff00 {
                    a | u32::from(other) << 8
                } else {
                    a
                };
                ports.write(CF8, 0, &a.to_le_bytes());
            }
            Op::PioRead { port, width } => {
                let d = &mut buf[..width.pio()];
                ports.read(CF8, u64::from(port % 8), d);
            }
            Op::PioWrite { port, width, value } => {
                ports.write(CF8, u64::from(port % 8), &value_bytes(value, width.pio()));
            }
            Op::EcamRead { dev, reg, width } => {
                let off = (u64::from(dev % 32) << 15) | u64::from(reg & 0x7fff);
                mmio.read(ECAM_BASE + off, &mut buf[..width.mmio()]);
            }
            Op::EcamWrite {
                dev,
                reg,
                width,
                value,
            } => {
                let off = (u64::from(dev % 32) << 15) | u64::from(reg & 0x7fff);
                mmio.write(ECAM_BASE + off, &value_bytes(value, width.mmio()));
            }
            Op::BarRead {
                device,
                offset,
                width,
            } => {
                let base = lock(pick(device)).bar0_base();
                if let Some(base) = base {
                    let addr = base.wrapping_add(u64::from(offset));
                    mmio.read(addr, &mut buf[..width.mmio()]);
                }
            }
            Op::BarWrite {
                device,
                offset,
                width,
                value,
            } => {
                let base = lock(pick(device)).bar0_base();
                if let Some(base) = base {
                    let addr = base.wrapping_add(u64::from(offset));
                    mmio.write(addr, &value_bytes(value, width.mmio()));
                }
            }
            Op::MmioRead { addr, width } => {
                mmio.read(addr, &mut buf[..width.mmio()]);
            }
            Op::MmioWrite { addr, width, value } => {
                mmio.write(addr, &value_bytes(value, width.mmio()));
            }
            Op::Interrupt {
                device,
                config,
                queue,
            } => {
                let irq = lock(pick(device)).interrupt();
                let kind = if config {
                    VirtioInterruptType::Config
                } else {
                    VirtioInterruptType::Queue(queue)
                };
                let _ = irq.trigger(kind);
            }
        }
    }

    // Identification registers are read-only whatever the guest wrote.
    for (slot, _) in &devs {
        let mut id = [0u8; 4];
        lock(&pci).config_read(0, *slot, 0, 0, &mut id);
        assert_eq!(
            u16::from_le_bytes([id[0], id[1]]),
            VIRTIO_PCI_VENDOR_ID,
            "vendor ID of slot {slot} changed"
        );
    }
}

fuzz_target!(|input: Input| {
    run(input);
});
