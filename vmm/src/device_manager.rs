//! Builds the PCI bus and the virtio devices a [`VmConfig`] asks for, and
//! wires each one to KVM: BARs on the MMIO bus, ioeventfds for queue
//! notifications, MSI-X vectors through irqfds.
//!
//! It also owns the ACPI Generic Event Device and the PCI hotplug
//! controller, so disks and network devices can be added to and removed
//! from a running guest (and the vsock device added):
//! [`DeviceManager::hotplug_disk`] (`hotplug_net`, `hotplug_vsock`) plugs a
//! device into a free slot, marks the
//! slot in `PCIU` and raises the GED interrupt; the guest's AML notifies
//! Linux, which scans the slot. [`DeviceManager::request_unplug`] marks the
//! slot in `PCID` and raises the GED; once the guest released the device it
//! writes the slot to `B0EJ`, and the eject handler — on that vCPU thread —
//! resets the device (stopping its worker), unmaps its BAR, unregisters its
//! ioeventfds and drops it (which unregisters its MSI irqfds).
//!
//! `build` makes each device from its configuration, `hotplug` plugs and
//! unplugs them in a running guest, `fs_pmem` holds the vhost-user and pmem
//! devices and `snapshot` saves and restores the bus.

mod build;
mod fs_pmem;
mod hotplug;
mod snapshot;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use devices::acpi::{GedDevice, GedEvents, PciHotplugController, PciHotplugState};
use devices::pci::{
    BarReprogram, MsiInterruptGroup, PciBarAllocator, PciBus, PciConfigIo, PciConfigMmio,
};
use devices::Bus;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio_devices::block::BlockCounters;
use virtio_devices::net::NetCounters;
use virtio_devices::rate_limiter::RateLimitGroup;
use virtio_devices::transport::pci::{msix_vectors_for, VirtioPciDevice};
use virtio_devices::worker::ThreadSetup;
use virtio_devices::{GuestMemory, VirtioDevice};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{ConsoleOutputMode, VmConfig};
use crate::interrupt::{GsiRouter, KvmMsiGroup};
use crate::VmmError;

pub use fs_pmem::PmemPlacement;
pub use hotplug::{
    hotplug_slots_for, pci_bdf, set_hotplug_possible, HotplugError, PciDeviceInfo,
    HOTPLUG_SPARE_SLOTS,
};
pub use snapshot::{DevicesSnapshot, PciDeviceSnapshot};

type SharedVirtioPci = Arc<Mutex<VirtioPciDevice>>;

/// Device types `vm.remove-device` may unplug: net (1) and block (2, also
/// vhost-user; virtio 1.2 §5), virtio-fs and pmem.
const REMOVABLE_TYPES: [u32; 4] = [
    1,
    2,
    virtio_devices::fs::VIRTIO_ID_FS,
    virtio_devices::pmem::VIRTIO_ID_PMEM,
];

/// Id of a vsock device configured without one (a VM has at most one).
const VSOCK_DEFAULT_ID: &str = "_vsock";

/// A device on the PCI bus, as the VMM tracks it.
pub struct PciDeviceHandle {
    /// Device id (`disk0`, `rng`, …, or the user's `id=`).
    pub id: String,
    /// PCI segment (host bridge).
    pub segment: u16,
    /// PCI slot on bus 0 of that segment.
    pub slot: u8,
    /// The transport wrapping the device.
    pub device: SharedVirtioPci,
    /// I/O counters, for block devices.
    pub block_counters: Option<Arc<BlockCounters>>,
    /// Traffic counters, for network devices.
    pub net_counters: Option<Arc<NetCounters>>,
    /// Whether `vm.remove-device` may unplug it (disk, net, fs, pmem).
    pub removable: bool,
}

/// Devices in the order they were added; shared with the eject handler.
type DeviceList = Arc<Mutex<Vec<PciDeviceHandle>>>;

/// Transports by slot, for the BAR-move callback and ejects.
type SlotMap = Arc<Mutex<HashMap<u8, SharedVirtioPci>>>;

/// One PCI segment: the root bus behind its host bridge, the BAR windows
/// it hands out and its transports by slot.
struct PciSegment {
    bus: Arc<Mutex<PciBus>>,
    /// Base of its ECAM window on the MMIO bus.
    ecam: u64,
    allocator: PciBarAllocator,
    by_slot: SlotMap,
}

/// The layout of each PCI segment `config` asks for
/// (`platform.num_pci_segments`, `platform.pci_segments` weights).
pub fn pci_segment_layouts(config: &VmConfig) -> Result<Vec<arch::PciSegmentLayout>, VmmError> {
    let platform = config.platform.clone().unwrap_or_default();
    let mut weights = vec![(1, 1); usize::from(platform.num_pci_segments)];
    for p in config.pci_segments.iter().flatten() {
        if let Some(w) = weights.get_mut(usize::from(p.pci_segment)) {
            *w = (p.mmio32_aperture_weight, p.mmio64_aperture_weight);
        }
    }
    arch::PLATFORM.pci.segments(&weights).map_err(|e| {
        VmmError::Config(format!(
            "platform.num_pci_segments={} / pci_segments: {e}",
            platform.num_pci_segments
        ))
    })
}

/// The VM's PCI bus, the virtio devices on it, and the ACPI devices that
/// announce hotplug and power-button events.
pub struct DeviceManager {
    vm: Arc<VmFd>,
    router: Arc<GsiRouter>,
    mem: GuestMemory,
    /// The PCI segments, by number; hotplug is on segment 0.
    segments: Vec<PciSegment>,
    /// The MMIO bus the ECAM windows and the BARs are on.
    mmio_bus: Arc<Bus>,
    thread_setup: Option<ThreadSetup>,
    /// The virtio console's pty path in `Pty` mode.
    pub console_pty: Option<std::path::PathBuf>,
    devices: DeviceList,
    /// The ACPI Generic Event Device, where the platform has ACPI hotplug.
    ged: Option<GedEvents>,
    hotplug: PciHotplugState,
    /// Slots 1 to this one are hotpluggable ([`hotplug_slots_for`]).
    hotplug_slots: u8,
    /// Rate-limit groups by id, shared by the disks that name them.
    rate_groups: HashMap<String, Arc<RateLimitGroup>>,
    /// Whether the VM's vsock device (at most one) is on the bus; vsock
    /// devices are never unplugged, so it stays set.
    vsock_plugged: bool,
    /// The balloon's control, when the VM has one.
    balloon: Option<Arc<virtio_devices::balloon::BalloonControl>>,
    /// The virtio-mem device's control, with `hotplug_method=virtio-mem`.
    virtio_mem: Option<Arc<virtio_devices::mem::MemControl>>,
    /// While restoring a snapshot: the slot of each device id.
    restore_slots: Option<HashMap<String, u8>>,
    /// virtio-pmem backing files, mapped into the guest as KVM slots.
    pmem: Vec<fs_pmem::PmemPlug>,
    /// While restoring a snapshot: the guest address of each pmem id.
    restore_pmem: Option<HashMap<String, u64>>,
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
    /// Creates a PCI root bus per segment of `pci_segments` with its
    /// config-space access paths (its ECAM window; for segment 0 also the
    /// 0xCF8 ports where the platform has them) and, where the platform has
    /// ACPI hotplug, the Generic Event Device and the PCI hotplug
    /// controller (segment 0). MSI routes follow `msi`.
    pub fn new(
        vm: Arc<VmFd>,
        mem: GuestMemory,
        io_bus: &Bus,
        mmio_bus: Arc<Bus>,
        thread_setup: Option<ThreadSetup>,
        pci_segments: &[arch::PciSegmentLayout],
        msi: arch::MsiDelivery,
    ) -> Result<Self, VmmError> {
        let router = Arc::new(GsiRouter::new(vm.clone(), msi));
        let mut segments = Vec::with_capacity(pci_segments.len());
        for layout in pci_segments {
            let bus = Arc::new(Mutex::new(PciBus::new(mmio_bus.clone())));
            if let (0, Some(port)) = (layout.segment, arch::PLATFORM.pci.config_io_port) {
                io_bus
                    .insert(
                        Arc::new(Mutex::new(PciConfigIo::new(bus.clone()))),
                        u64::from(port),
                        8,
                    )
                    .map_err(VmmError::Bus)?;
            }
            mmio_bus
                .insert(
                    Arc::new(Mutex::new(PciConfigMmio::new(bus.clone()))),
                    layout.ecam.0,
                    layout.ecam.1,
                )
                .map_err(VmmError::Bus)?;
            let by_slot: SlotMap = Arc::default();
            {
                let vm = vm.clone();
                let by_slot = by_slot.clone();
                lock(&bus).set_reprogram_callback(Box::new(move |slot, r| {
                    if let Some(dev) = lock(&by_slot).get(&slot) {
                        move_ioeventfds(&vm, dev, r);
                    }
                }));
            }
            let allocator = PciBarAllocator::new(
                layout.mmio32.0,
                layout.mmio32.1,
                layout.mmio64.0,
                layout.mmio64.1,
            );
            segments.push(PciSegment {
                bus,
                ecam: layout.ecam.0,
                allocator,
                by_slot,
            });
        }
        let Some(segment0) = segments.first() else {
            return Err(VmmError::Config(
                "platform.num_pci_segments: at least 1".into(),
            ));
        };
        let (pci_bus, by_slot) = (segment0.bus.clone(), segment0.by_slot.clone());
        let devices: DeviceList = Arc::default();

        let hotplug = PciHotplugState::new();
        let ged_events = match arch::PLATFORM.acpi_hotplug {
            None => None,
            Some(acpi) => {
                let ged_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
                vm.register_irqfd(&ged_irq, acpi.ged_irq)
                    .map_err(VmmError::Kvm)?;
                let ged = GedDevice::new(ged_irq);
                let ged_events = ged.events();
                io_bus
                    .insert(
                        Arc::new(Mutex::new(ged)),
                        u64::from(acpi.ged_port),
                        u64::from(acpi.ged_port_size),
                    )
                    .map_err(VmmError::Bus)?;
                let on_eject = {
                    let (vm, pci_bus) = (vm.clone(), pci_bus.clone());
                    let (by_slot, devices) = (by_slot.clone(), devices.clone());
                    Box::new(move |slot| {
                        hotplug::eject_slot(&vm, &pci_bus, &by_slot, &devices, slot)
                    })
                };
                io_bus
                    .insert(
                        Arc::new(Mutex::new(PciHotplugController::new(
                            hotplug.clone(),
                            on_eject,
                        ))),
                        u64::from(acpi.pci_hotplug_port),
                        u64::from(acpi.pci_hotplug_port_size),
                    )
                    .map_err(VmmError::Bus)?;
                Some(ged_events)
            }
        };
        Ok(Self {
            vm,
            router,
            mem,
            segments,
            mmio_bus,
            thread_setup,
            console_pty: None,
            devices,
            ged: ged_events,
            hotplug,
            hotplug_slots: 0,
            rate_groups: HashMap::new(),
            vsock_plugged: false,
            balloon: None,
            virtio_mem: None,
            restore_slots: None,
            pmem: Vec::new(),
            restore_pmem: None,
        })
    }

    /// Adds every device `config` lists: disks first (so the first disk is
    /// /dev/vda), then the console and the rng.
    pub fn add_configured_devices(&mut self, config: &VmConfig) -> Result<(), VmmError> {
        self.hotplug_slots = hotplug_slots_for(config);
        for g in config.rate_limit_groups.iter().flatten() {
            let group = RateLimitGroup::new(&g.id, g.rate_limiter_config.limits())
                .map_err(|e| VmmError::Config(format!("--rate-limit-group: id={}: {e}", g.id)))?;
            self.rate_groups.insert(g.id.clone(), group);
        }
        for (i, disk) in config.disks.iter().flatten().enumerate() {
            let id = disk.id.clone().unwrap_or_else(|| format!("_disk{i}"));
            let (blk, counters) = self.build_disk(disk, &id)?;
            self.add_virtio(id, disk.pci_segment, blk, counters)?;
        }
        for (i, net) in config.net.iter().flatten().enumerate() {
            let id = net.id.clone().unwrap_or_else(|| format!("_net{i}"));
            let (dev, counters) = self.build_net(net, &id)?;
            self.add_virtio(id.clone(), net.pci_segment, dev, None)?;
            self.set_net_counters(&id, counters);
        }
        for (i, fs) in config.fs.iter().flatten().enumerate() {
            let id = fs.id.clone().unwrap_or_else(|| format!("_fs{i}"));
            let dev = self.build_fs(fs)?;
            self.add_virtio(id, fs.pci_segment, dev, None)?;
        }
        for (i, p) in config.pmem.iter().flatten().enumerate() {
            let id = p.id.clone().unwrap_or_else(|| format!("_pmem{i}"));
            let dev = self.build_pmem(p, &id)?;
            self.add_virtio(id, p.pci_segment, dev, None)?;
        }
        let console = &config.console;
        if console.mode != ConsoleOutputMode::Off {
            let dev = self.build_console(console)?;
            self.add_virtio("_console".into(), console.pci_segment, dev, None)?;
        }
        if let Some(vsock) = &config.vsock {
            let id = vsock.id.clone().unwrap_or_else(|| VSOCK_DEFAULT_ID.into());
            let dev = self.build_vsock(vsock, &id)?;
            self.add_virtio(id, vsock.pci_segment, dev, None)?;
            self.vsock_plugged = true;
        }
        if let Some(balloon) = &config.balloon {
            self.add_balloon(balloon, &config.memory)?;
        }
        if let Some(region) = crate::memory::virtio_mem_region(config) {
            self.add_virtio_mem(&region, &config.memory)?;
        }
        if let Some(rng) = &config.rng {
            let dev = self.build_rng(rng)?;
            self.add_virtio("_rng".into(), rng.pci_segment, dev, None)?;
        }
        Ok(())
    }

    /// The virtio-mem device's control, when the VM has one.
    pub fn virtio_mem(&self) -> Option<&Arc<virtio_devices::mem::MemControl>> {
        self.virtio_mem.as_ref()
    }

    /// The balloon's control, when the VM has a balloon.
    pub fn balloon(&self) -> Option<&Arc<virtio_devices::balloon::BalloonControl>> {
        self.balloon.as_ref()
    }

    /// Wraps `device` in a virtio-pci transport and plugs it into bus 0 of
    /// PCI segment `segment`.
    pub fn add_virtio(
        &mut self,
        id: String,
        segment: u16,
        device: Box<dyn VirtioDevice>,
        block_counters: Option<Arc<BlockCounters>>,
    ) -> Result<u8, VmmError> {
        let err = |what: String| VmmError::Device(format!("{id}: {what}"));
        let count = self.segments.len();
        let Some(seg) = self.segments.get_mut(usize::from(segment)) else {
            return Err(VmmError::Config(format!(
                "{id}: pci_segment={segment}: the VM has {count} PCI segment(s) \
                 (platform.num_pci_segments)"
            )));
        };
        let vectors = msix_vectors_for(&*device);
        let removable = REMOVABLE_TYPES.contains(&device.device_type());
        let group = Arc::new(
            KvmMsiGroup::new(self.router.clone(), vectors).map_err(|e| err(e.to_string()))?,
        );
        let msi: Arc<dyn MsiInterruptGroup> = group.clone();
        let transport =
            VirtioPciDevice::new(device, self.mem.clone(), msi).map_err(|e| err(e.to_string()))?;
        let transport = Arc::new(Mutex::new(transport));
        let slot = self
            .restore_slots
            .as_ref()
            .and_then(|slots| slots.get(&id).copied());
        let info = lock(&seg.bus)
            .add_device_at(slot, transport.clone(), &mut seg.allocator)
            .map_err(|e| err(e.to_string()))?;
        if let Some(bar0) = info.bars.iter().find(|b| b.index == 0) {
            let registered = register_ioeventfds(&self.vm, &lock(&transport), bar0.base);
            if let Err(e) = registered {
                // Leave no half-plugged device behind (matters for hotplug).
                let dev = lock(&transport);
                for (addr, evt) in dev.ioeventfds(bar0.base) {
                    let _ =
                        self.vm
                            .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch);
                }
                drop(dev);
                lock(&seg.bus).remove_device(info.slot);
                return Err(err(format!("ioeventfd: {e}")));
            }
        }
        // Bus 0, function 0: the requester id is the slot's devfn.
        group.set_device_id(u32::from(info.slot) << 3);
        lock(&seg.by_slot).insert(info.slot, transport.clone());
        log::info!(
            "{id}: PCI {segment:04x}:00:{:02x}.0 ({})",
            info.slot,
            lock(&transport).name()
        );
        lock(&self.devices).push(PciDeviceHandle {
            id,
            segment,
            slot: info.slot,
            device: transport,
            block_counters,
            net_counters: None,
            removable,
        });
        Ok(info.slot)
    }

    /// Gives every device the guest memory `memory` (after RAM was
    /// hot-added): workers read the shared map on each request, and each
    /// vhost-user device sends the new regions to its backend
    /// ([`VirtioPciDevice::memory_added`]). A device that cannot is marked
    /// DEVICE_NEEDS_RESET and logged, and the memory stays added: the
    /// resize succeeds for the guest and the other devices (the broken
    /// device's reset sends the whole table to its backend again). Every
    /// exchange with a backend has a deadline, so this never hangs.
    pub fn update_memory(&self, memory: &vm_memory::GuestMemoryMmap) {
        match self.mem.lock() {
            Ok(guard) => guard.replace(memory.clone()),
            Err(e) => log::error!("cannot hand the devices the new guest memory: {e}"),
        }
        let transports: Vec<(String, SharedVirtioPci)> = lock(&self.devices)
            .iter()
            .map(|d| (d.id.clone(), d.device.clone()))
            .collect();
        for (id, transport) in transports {
            if let Err(e) = lock(&transport).memory_added(memory) {
                log::error!("{id}: {e}; the device needs a reset");
            }
        }
    }

    /// Per-device I/O counters for `vm.counters`, keyed by device id.
    pub fn counters(
        &self,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeMap<&'static str, u64>> {
        let mut all = std::collections::BTreeMap::new();
        for dev in lock(&self.devices).iter() {
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
            if let Some(c) = &dev.net_counters {
                let s = c.snapshot();
                let map = std::collections::BTreeMap::from([
                    ("rx_bytes", s.rx_bytes),
                    ("rx_frames", s.rx_frames),
                    ("tx_bytes", s.tx_bytes),
                    ("tx_frames", s.tx_frames),
                ]);
                all.insert(dev.id.clone(), map);
            }
        }
        if let Some(mem) = &self.virtio_mem {
            all.insert(
                "virtio-mem".into(),
                mem.counter_values().into_iter().collect(),
            );
        }
        if let Some(balloon) = &self.balloon {
            // The guest's statistics are refreshed on demand; a guest that
            // does not answer quickly gets its previous sample reported.
            let values = balloon.counter_values(std::time::Duration::from_millis(200));
            all.insert("balloon".into(), values.into_iter().collect());
        }
        all
    }
}

impl Drop for DeviceManager {
    /// The PCI bus and the MMIO bus refer to each other (the ECAM window is
    /// a device on the MMIO bus, the BARs of the PCI bus' devices are
    /// mapped there), so nothing on them would be dropped with the VM.
    /// Taking the devices and the ECAM window out ends every device with
    /// its VM: workers joined, images unlocked and files closed before a
    /// guest reset builds the VM again from the same configuration.
    fn drop(&mut self) {
        let placed: Vec<(u16, u8)> = lock(&self.devices)
            .iter()
            .map(|d| (d.segment, d.slot))
            .collect();
        for (segment, slot) in placed {
            if let Some(s) = self.segments.get(usize::from(segment)) {
                lock(&s.bus).remove_device(slot);
            }
        }
        lock(&self.devices).clear();
        for s in &self.segments {
            lock(&s.by_slot).clear();
            let _ = self.mmio_bus.remove(s.ecam);
        }
    }
}
