//! Builds the PCI bus and the virtio devices a [`VmConfig`] asks for, and
//! wires each one to KVM: BARs on the MMIO bus, ioeventfds for queue
//! notifications, MSI-X vectors through irqfds.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use arch::layout;
use devices::pci::{
    BarReprogram, MsiInterruptGroup, PciBarAllocator, PciBus, PciConfigIo, PciConfigMmio,
};
use devices::Bus;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio_devices::block::disk::{open_disk_with_format, DiskOptions};
use virtio_devices::block::{BlockCounters, BlockOptions, VirtioBlock};
use virtio_devices::console::VirtioConsole;
use virtio_devices::rng::VirtioRng;
use virtio_devices::transport::pci::{msix_vectors_for, VirtioPciDevice};
use virtio_devices::worker::ThreadSetup;
use virtio_devices::{GuestMemory, VirtioDevice};

use crate::config::{ConsoleOutputMode, VmConfig};
use crate::interrupt::{GsiRouter, KvmMsiGroup};
use crate::VmmError;

type SharedVirtioPci = Arc<Mutex<VirtioPciDevice>>;

/// A device on the PCI bus, as the VMM tracks it.
pub struct PciDeviceHandle {
    /// Device id (`disk0`, `rng`, …, or the user's `id=`).
    pub id: String,
    /// PCI slot on bus 0.
    pub slot: u8,
    /// The transport wrapping the device.
    pub device: SharedVirtioPci,
    /// I/O counters, for block devices.
    pub block_counters: Option<Arc<BlockCounters>>,
}

/// The VM's PCI bus and the virtio devices on it.
pub struct DeviceManager {
    vm: Arc<VmFd>,
    router: Arc<GsiRouter>,
    mem: GuestMemory,
    pci_bus: Arc<Mutex<PciBus>>,
    allocator: PciBarAllocator,
    by_slot: Arc<Mutex<HashMap<u8, SharedVirtioPci>>>,
    thread_setup: Option<ThreadSetup>,
    /// Devices in the order they were added.
    pub devices: Vec<PciDeviceHandle>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn register_ioeventfds(
    vm: &VmFd,
    dev: &VirtioPciDevice,
    bar0: u64,
) -> Result<(), kvm_ioctls::Error> {
    for (addr, evt) in dev.ioeventfds(bar0) {
        vm.register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)?;
    }
    Ok(())
}

/// Moves a device's ioeventfds when the guest moves its BAR 0.
fn move_ioeventfds(vm: &VmFd, dev: &SharedVirtioPci, r: &BarReprogram) {
    if r.index != 0 {
        return;
    }
    let dev = lock(dev);
    for (addr, evt) in dev.ioeventfds(r.old_base) {
        if let Err(e) = vm.unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch) {
            log::debug!("{}: unregister ioeventfd at {addr:#x}: {e}", dev.name());
        }
    }
    if let Err(e) = register_ioeventfds(vm, &dev, r.new_base) {
        log::warn!(
            "{}: cannot move ioeventfds to {:#x}: {e}; notifications fall back to traps",
            dev.name(),
            r.new_base
        );
    }
}

impl DeviceManager {
    /// Creates the PCI root bus and its config-space access paths (0xCF8
    /// ports and ECAM).
    pub fn new(
        vm: Arc<VmFd>,
        mem: GuestMemory,
        io_bus: &Bus,
        mmio_bus: Arc<Bus>,
        thread_setup: Option<ThreadSetup>,
    ) -> Result<Self, VmmError> {
        let router = Arc::new(GsiRouter::new(vm.clone()));
        let pci_bus = Arc::new(Mutex::new(PciBus::new(mmio_bus.clone())));
        io_bus
            .insert(
                Arc::new(Mutex::new(PciConfigIo::new(pci_bus.clone()))),
                u64::from(layout::PCI_CONFIG_IO_PORT),
                8,
            )
            .map_err(VmmError::Bus)?;
        mmio_bus
            .insert(
                Arc::new(Mutex::new(PciConfigMmio::new(pci_bus.clone()))),
                layout::PCI_MMCONFIG_START,
                layout::PCI_MMCONFIG_SIZE,
            )
            .map_err(VmmError::Bus)?;
        let by_slot: Arc<Mutex<HashMap<u8, SharedVirtioPci>>> = Arc::default();
        {
            let vm = vm.clone();
            let by_slot = by_slot.clone();
            lock(&pci_bus).set_reprogram_callback(Box::new(move |slot, r| {
                if let Some(dev) = lock(&by_slot).get(&slot) {
                    move_ioeventfds(&vm, dev, r);
                }
            }));
        }
        let allocator = PciBarAllocator::new(
            layout::PCI_MMIO32_START,
            layout::PCI_MMIO32_END,
            layout::PCI_MMIO64_START,
            layout::PCI_MMIO64_START + layout::PCI_MMIO64_SIZE,
        );
        Ok(Self {
            vm,
            router,
            mem,
            pci_bus,
            allocator,
            by_slot,
            thread_setup,
            devices: Vec::new(),
        })
    }

    /// Adds every device `config` lists: disks first (so the first disk is
    /// /dev/vda), then the console and the rng.
    pub fn add_configured_devices(&mut self, config: &VmConfig) -> Result<(), VmmError> {
        for (i, disk) in config.disks.iter().flatten().enumerate() {
            let path = disk
                .path
                .as_ref()
                .ok_or_else(|| VmmError::Config(format!("--disk: disk {i} has no path=")))?;
            let opts = DiskOptions {
                readonly: disk.readonly,
                direct: disk.direct,
            };
            let image = open_disk_with_format(path, disk.image_type.as_deref(), &opts)
                .map_err(|e| VmmError::Config(format!("--disk: path={}: {e}", path.display())))?;
            let id = disk.id.clone().unwrap_or_else(|| format!("_disk{i}"));
            let blk = VirtioBlock::new(
                image,
                BlockOptions {
                    readonly: disk.readonly,
                    serial: disk.serial.clone(),
                    num_queues: u16::try_from(disk.num_queues).unwrap_or(u16::MAX),
                    queue_size: disk.queue_size,
                    id: id.clone(),
                },
            )
            .map_err(|e| VmmError::Config(format!("--disk: {e}")))?;
            let counters = blk.counters();
            let mut blk = blk;
            if let Some(s) = &self.thread_setup {
                blk.set_thread_setup(s.clone());
            }
            self.add_virtio(id, Box::new(blk), Some(counters))?;
        }
        let console = &config.console;
        if console.mode != ConsoleOutputMode::Off {
            let (output, input): (Option<Box<dyn Write + Send>>, _) = match console.mode {
                ConsoleOutputMode::Tty => {
                    let stdin = std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| {
                        VmmError::Config(format!("--console: cannot use stdin: {e}"))
                    })?;
                    (
                        Some(Box::new(std::io::stdout())),
                        Some(std::fs::File::from(stdin)),
                    )
                }
                ConsoleOutputMode::File => {
                    let path = console.file.as_ref().ok_or_else(|| {
                        VmmError::Config("--console: file mode needs file=PATH".into())
                    })?;
                    let f = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| {
                            VmmError::Config(format!(
                                "--console: cannot open {}: {e}",
                                path.display()
                            ))
                        })?;
                    (Some(Box::new(f)), None)
                }
                _ => (None, None),
            };
            let mut dev = VirtioConsole::new(output, input)
                .map_err(|e| VmmError::Config(format!("--console: {e}")))?;
            if let Some(s) = &self.thread_setup {
                dev.set_thread_setup(s.clone());
            }
            self.add_virtio("_console".into(), Box::new(dev), None)?;
        }
        if let Some(rng) = &config.rng {
            let mut dev = VirtioRng::new(&rng.src)
                .map_err(|e| VmmError::Config(format!("--rng: src={}: {e}", rng.src.display())))?;
            if let Some(s) = &self.thread_setup {
                dev.set_thread_setup(s.clone());
            }
            self.add_virtio("_rng".into(), Box::new(dev), None)?;
        }
        Ok(())
    }

    /// Wraps `device` in a virtio-pci transport and plugs it into the bus.
    pub fn add_virtio(
        &mut self,
        id: String,
        device: Box<dyn VirtioDevice>,
        block_counters: Option<Arc<BlockCounters>>,
    ) -> Result<u8, VmmError> {
        let err = |what: String| VmmError::Device(format!("{id}: {what}"));
        let vectors = msix_vectors_for(&*device);
        let msi: Arc<dyn MsiInterruptGroup> = Arc::new(
            KvmMsiGroup::new(self.router.clone(), vectors).map_err(|e| err(e.to_string()))?,
        );
        let transport =
            VirtioPciDevice::new(device, self.mem.clone(), msi).map_err(|e| err(e.to_string()))?;
        let transport = Arc::new(Mutex::new(transport));
        let info = lock(&self.pci_bus)
            .add_device(transport.clone(), &mut self.allocator)
            .map_err(|e| err(e.to_string()))?;
        if let Some(bar0) = info.bars.iter().find(|b| b.index == 0) {
            register_ioeventfds(&self.vm, &lock(&transport), bar0.base)
                .map_err(|e| err(format!("ioeventfd: {e}")))?;
        }
        lock(&self.by_slot).insert(info.slot, transport.clone());
        log::info!("{id}: PCI slot {} ({})", info.slot, lock(&transport).name());
        self.devices.push(PciDeviceHandle {
            id,
            slot: info.slot,
            device: transport,
            block_counters,
        });
        Ok(info.slot)
    }

    /// Per-device I/O counters for `vm.counters`, keyed by device id.
    pub fn counters(
        &self,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeMap<&'static str, u64>> {
        let mut all = std::collections::BTreeMap::new();
        for dev in &self.devices {
            if let Some(c) = &dev.block_counters {
                let s = c.snapshot();
                let map = std::collections::BTreeMap::from([
                    ("read_bytes", s.read_bytes),
                    ("write_bytes", s.write_bytes),
                    ("read_ops", s.read_ops),
                    ("write_ops", s.write_ops),
                ]);
                all.insert(dev.id.clone(), map);
            }
        }
        all
    }
}
