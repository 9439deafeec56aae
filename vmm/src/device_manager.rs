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

mod fs_pmem;
mod snapshot;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::acpi::{
    GedDevice, GedEvents, PciHotplugController, PciHotplugState, GED_PCI_HOTPLUG, GED_POWER_BUTTON,
    GED_REGISTER_SIZE, PCI_HOTPLUG_REGISTER_SIZE,
};
use devices::pci::{
    BarReprogram, MsiInterruptGroup, PciBarAllocator, PciBus, PciConfigIo, PciConfigMmio, PciDevice,
};
use devices::Bus;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio_devices::block::disk::{open_disk_with_format, DiskOptions};
use virtio_devices::block::{BlockCounters, BlockOptions, VirtioBlock};
use virtio_devices::console::VirtioConsole;
use virtio_devices::net::{MacAddr, NetBackend, NetCounters, NetOptions, VirtioNet};
use virtio_devices::rate_limiter::RateLimitGroup;
use virtio_devices::rng::VirtioRng;
use virtio_devices::transport::pci::{msix_vectors_for, VirtioPciDevice};
use virtio_devices::vsock::VirtioVsock;
use virtio_devices::worker::ThreadSetup;
use virtio_devices::{GuestMemory, VirtioDevice};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{ConsoleOutputMode, DiskConfig, NetConfig, VmConfig, VsockConfig};
use crate::console_host::HostConsole;
use crate::interrupt::{GsiRouter, KvmMsiGroup};
use crate::VmmError;

pub use fs_pmem::PmemPlacement;
pub use snapshot::{DevicesSnapshot, PciDeviceSnapshot};

type SharedVirtioPci = Arc<Mutex<VirtioPciDevice>>;

// The AML (arch) and the register blocks (devices) must agree.
const _: () = assert!(match arch::PLATFORM.acpi_hotplug {
    Some(l) => {
        l.event_pci_hotplug == GED_PCI_HOTPLUG
            && l.event_power_button == GED_POWER_BUTTON
            && l.ged_port_size as u64 == GED_REGISTER_SIZE
            && l.pci_hotplug_port_size as u64 == PCI_HOTPLUG_REGISTER_SIZE
    }
    None => true,
});

/// BAR0 offset of `device_status` in the virtio-pci common configuration
/// (byte 20 of `struct virtio_pci_common_cfg`, virtio 1.2 §4.1.4.3, which
/// our transport puts at BAR0 offset 0). Writing 0 resets the device.
const VIRTIO_PCI_DEVICE_STATUS: u64 = 0x14;

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

/// Free PCI slots the ACPI tables describe as hotpluggable beyond the
/// cold-plugged devices. Each described slot costs the guest about 0.2 s of
/// boot on PVM hosts (an ACPI device and a hotplug slot in Linux), so not
/// all 31 are described.
pub const HOTPLUG_SPARE_SLOTS: u8 = 8;

/// How many PCI slots, from slot 1, are hotpluggable for `config`: one per
/// cold-plugged device (slots fill from 1, so these are the slots they
/// take; removing one frees its slot for a hot-added device) plus
/// [`HOTPLUG_SPARE_SLOTS`], at most 31. `Vm::boot` passes it to the ACPI
/// tables and [`DeviceManager`] refuses hot-adds beyond it.
pub fn hotplug_slots_for(config: &VmConfig) -> u8 {
    let Some(acpi) = arch::PLATFORM.acpi_hotplug else {
        return 0;
    };
    if !HOTPLUG_POSSIBLE.load(Ordering::Relaxed) {
        return 0;
    }
    // Cold-plugged devices on segment 0 take its first slots.
    let on0 = |seg: u16| usize::from(seg == 0);
    let cold = config
        .disks
        .iter()
        .flatten()
        .map(|d| on0(d.pci_segment))
        .sum::<usize>()
        + config
            .net
            .iter()
            .flatten()
            .map(|n| on0(n.pci_segment))
            .sum::<usize>()
        + usize::from(config.console.mode != ConsoleOutputMode::Off)
            * on0(config.console.pci_segment)
        + config.rng.as_ref().map_or(0, |r| on0(r.pci_segment))
        + config.vsock.as_ref().map_or(0, |v| on0(v.pci_segment))
        + config
            .fs
            .iter()
            .flatten()
            .map(|f| on0(f.pci_segment))
            .sum::<usize>()
        + config
            .pmem
            .iter()
            .flatten()
            .map(|p| on0(p.pci_segment))
            .sum::<usize>();
    let slots = cold.saturating_add(usize::from(HOTPLUG_SPARE_SLOTS));
    u8::try_from(slots.min(usize::from(acpi.last_hotplug_slot))).unwrap_or(0)
}

/// Whether anything can hot-plug devices into this process's VMs (false
/// when chv runs without an API socket). Without it the ACPI tables
/// describe no hotplug slot: each one costs the guest boot time.
static HOTPLUG_POSSIBLE: AtomicBool = AtomicBool::new(true);

/// Tells [`hotplug_slots_for`] whether hotplug can happen at all (an API
/// socket exists); set once at start-up.
pub fn set_hotplug_possible(possible: bool) {
    HOTPLUG_POSSIBLE.store(possible, Ordering::Relaxed);
}

/// Where a hot-added device landed (Cloud Hypervisor's `PciDeviceInfo`,
/// the body of `vm.add-disk`'s answer).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PciDeviceInfo {
    /// Device id.
    pub id: String,
    /// PCI address, `0000:00:SS.0`.
    pub bdf: String,
}

/// Why a hotplug request was refused.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// Another device already uses this id.
    #[error("a device with id {0} already exists")]
    DuplicateId(String),
    /// Every slot the ACPI tables describe as hotpluggable is in use.
    #[error("no free hotpluggable PCI slot (slots 1-{0} are described to the guest)")]
    NoHotplugSlot(u8),
    /// No device has this id.
    #[error("no device with id {0}")]
    NotFound(String),
    /// Only disks, network, virtio-fs and pmem devices can be unplugged.
    #[error("device {0} cannot be unplugged (only disk, net, fs and pmem devices can)")]
    NotRemovable(String),
    /// The VM already has its (single) vsock device.
    #[error("the VM already has a vsock device")]
    VsockExists,
    /// The disk or its slot could not be set up.
    #[error("{0}")]
    Device(#[from] VmmError),
    /// The platform has no way to tell the guest (no ACPI hotplug).
    #[error("{0}")]
    Unsupported(String),
    /// Hotplug or unplug asked for on a PCI segment other than 0.
    #[error("{0}")]
    NotOnSegment0(String),
    /// The guest could not be told (GED interrupt or hotplug register).
    #[error("cannot notify the guest: {0}")]
    Notify(String),
}

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

/// The guest MAC a `--net` entry names, if any.
pub(super) fn guest_mac(net: &NetConfig) -> Result<Option<MacAddr>, VmmError> {
    net.mac
        .as_ref()
        .map(|m| {
            m.parse::<MacAddr>()
                .map_err(|e| VmmError::Config(format!("--net: mac={m}: {e}")))
        })
        .transpose()
}

/// The virtio-net options a `--net` entry asks for.
fn net_options(net: &NetConfig, id: &str) -> Result<NetOptions, VmmError> {
    let backend = match (&net.tap, &net.fds) {
        (_, Some(fds)) => NetBackend::Fds(fds.clone()),
        (Some(tap), None) => NetBackend::Name(tap.clone()),
        (None, None) => NetBackend::Name("vmtap%d".into()),
    };
    let mac = guest_mac(net)?;
    Ok(NetOptions {
        backend,
        mac,
        ip: net.ip,
        mask: net.mask,
        mtu: net.mtu,
        num_queues: u16::try_from(net.num_queues).unwrap_or(u16::MAX),
        queue_size: net.queue_size,
        offload_tso: net.offload_tso,
        offload_csum: net.offload_csum,
        id: id.to_string(),
        rate_limit: net.rate_limiter_config.as_ref().map(|c| c.limits()),
    })
}

/// A NIC's device and, for chv's own virtio-net, its traffic counters.
type BuiltNet = (Box<dyn VirtioDevice>, Option<Arc<NetCounters>>);

/// A disk's device and, for chv's own virtio-blk, its I/O counters.
type BuiltDisk = (Box<dyn VirtioDevice>, Option<Arc<BlockCounters>>);

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

/// Runs on the vCPU thread that wrote `B0EJ` for `slot`: stops the device
/// and takes it off the bus and out of KVM. Everything here must pass the
/// vCPU seccomp filter (ioeventfd/irqfd ioctls, joining the worker thread,
/// closing the disk image).
fn eject_slot(
    vm: &VmFd,
    pci_bus: &Mutex<PciBus>,
    by_slot: &Mutex<HashMap<u8, SharedVirtioPci>>,
    devices: &Mutex<Vec<PciDeviceHandle>>,
    slot: u8,
) {
    let handle = {
        let mut devs = lock(devices);
        // ACPI hotplug (and so eject) is on segment 0 only.
        let at = devs.iter().position(|d| d.segment == 0 && d.slot == slot);
        at.map(|i| devs.remove(i))
    };
    let Some(handle) = handle else {
        log::warn!("PCI slot {slot}: eject of an empty slot");
        return;
    };
    lock(by_slot).remove(&slot);
    let on_bus = lock(pci_bus).remove_device(slot);
    {
        let mut dev = lock(&handle.device);
        if let Some(bar0) = dev.bar0_base() {
            for (addr, evt) in dev.ioeventfds(bar0) {
                if let Err(e) = vm.unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
                {
                    log::debug!("{}: unregister ioeventfd at {addr:#x}: {e}", handle.id);
                }
            }
        }
        // A driver reset: stops the worker thread (joined here).
        dev.bar_write(0, VIRTIO_PCI_DEVICE_STATUS, &[0]);
    }
    log::info!("{}: ejected from PCI slot {slot}", handle.id);
    // The last references: dropping the transport closes the image and
    // unregisters the MSI irqfds.
    drop(on_bus);
    drop(handle);
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
                    Box::new(move |slot| eject_slot(&vm, &pci_bus, &by_slot, &devices, slot))
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

    /// Opens `disk`'s image and builds its virtio-blk device with id `id`.
    fn build_disk(&self, disk: &DiskConfig, id: &str) -> Result<BuiltDisk, VmmError> {
        if disk.vhost_user {
            return Ok((self.build_vhost_user_disk(disk, id)?, None));
        }
        let path = disk
            .path
            .as_ref()
            .ok_or_else(|| VmmError::Config(format!("--disk: disk {id} has no path=")))?;
        let opts = DiskOptions {
            readonly: disk.readonly,
            direct: disk.direct,
        };
        let rate_limit = match (&disk.rate_limiter_config, &disk.rate_limit_group) {
            (Some(c), _) => Some(
                RateLimitGroup::new(id, c.limits())
                    .map_err(|e| VmmError::Config(format!("--disk: id={id}: {e}")))?,
            ),
            (None, Some(name)) => Some(self.rate_groups.get(name).cloned().ok_or_else(|| {
                VmmError::Config(format!("--disk: rate_limit_group={name}: no such group"))
            })?),
            (None, None) => None,
        };
        let image =
            open_disk_with_format(path, disk.image_type.and_then(|t| t.format_name()), &opts)
                .map_err(|e| VmmError::Config(format!("--disk: path={}: {e}", path.display())))?;
        let mut blk = VirtioBlock::new(
            image,
            BlockOptions {
                readonly: disk.readonly,
                serial: disk.serial.clone(),
                num_queues: u16::try_from(disk.num_queues).unwrap_or(u16::MAX),
                queue_size: disk.queue_size,
                id: id.to_string(),
                rate_limit,
            },
        )
        .map_err(|e| VmmError::Config(format!("--disk: {e}")))?;
        let counters = blk.counters();
        if let Some(s) = &self.thread_setup {
            blk.set_thread_setup(s.clone());
        }
        Ok((Box::new(blk), Some(counters)))
    }

    /// Opens (or creates) `net`'s tap and builds its virtio-net device with
    /// id `id` (or connects to its vhost-user backend: no counters then).
    fn build_net(&self, net: &NetConfig, id: &str) -> Result<BuiltNet, VmmError> {
        if net.vhost_user {
            return Ok((self.build_vhost_user_net(net, id)?, None));
        }
        let mut dev = VirtioNet::new(net_options(net, id)?)
            .map_err(|e| VmmError::Config(format!("--net: {e}")))?;
        log::info!("{id}: tap {} mac {}", dev.tap_name(), dev.mac());
        if let Some(s) = &self.thread_setup {
            dev.set_thread_setup(s.clone());
        }
        let counters = dev.counters();
        Ok((Box::new(dev), Some(counters)))
    }

    /// Binds `vsock`'s listening socket and builds its virtio-vsock device
    /// with id `id`.
    fn build_vsock(
        &self,
        vsock: &VsockConfig,
        id: &str,
    ) -> Result<Box<dyn VirtioDevice>, VmmError> {
        let mut dev = VirtioVsock::new(u64::from(vsock.cid), &vsock.socket, id).map_err(|e| {
            VmmError::Config(format!("--vsock: socket={}: {e}", vsock.socket.display()))
        })?;
        if let Some(s) = &self.thread_setup {
            dev.set_thread_setup(s.clone());
        }
        Ok(Box::new(dev))
    }

    /// Attaches traffic counters to the network device `id`.
    fn set_net_counters(&self, id: &str, counters: Option<Arc<NetCounters>>) {
        let Some(counters) = counters else { return };
        if let Some(h) = lock(&self.devices).iter_mut().find(|d| d.id == id) {
            h.net_counters = Some(counters);
        }
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
                ConsoleOutputMode::Pty | ConsoleOutputMode::Socket => {
                    let host = HostConsole::open(console, "console", self.thread_setup.clone())
                        .map_err(VmmError::Config)?
                        .ok_or_else(|| VmmError::Config("console: no host end".into()))?;
                    let input = host.device_end.try_clone().map_err(VmmError::Thread)?;
                    let output = host.output().map_err(VmmError::Thread)?;
                    self.console_pty = host.pty_path;
                    (Some(output), Some(input))
                }
                _ => (None, None),
            };
            let mut dev = VirtioConsole::new(output, input)
                .map_err(|e| VmmError::Config(format!("--console: {e}")))?;
            if let Some(s) = &self.thread_setup {
                dev.set_thread_setup(s.clone());
            }
            self.add_virtio("_console".into(), console.pci_segment, Box::new(dev), None)?;
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
            let mut dev = VirtioRng::new(&rng.src)
                .map_err(|e| VmmError::Config(format!("--rng: src={}: {e}", rng.src.display())))?;
            if let Some(s) = &self.thread_setup {
                dev.set_thread_setup(s.clone());
            }
            self.add_virtio("_rng".into(), rng.pci_segment, Box::new(dev), None)?;
        }
        Ok(())
    }

    /// Adds the virtio-balloon `config` describes (RAM backed as `memory`
    /// says: hugetlb RAM is given back in whole huge pages).
    fn add_balloon(
        &mut self,
        config: &crate::config::BalloonConfig,
        memory: &crate::config::MemoryConfig,
    ) -> Result<(), VmmError> {
        use virtio_devices::balloon::{BalloonOptions, VirtioBalloon};
        let huge_page_size = if memory.hugepages {
            memory
                .hugepage_size
                .unwrap_or_else(crate::memory::backing::default_hugepage_size)
        } else {
            0
        };
        let mut dev = VirtioBalloon::new(BalloonOptions {
            size: config.size,
            deflate_on_oom: config.deflate_on_oom,
            free_page_reporting: config.free_page_reporting,
            huge_page_size,
        })
        .map_err(|e| VmmError::Config(format!("--balloon: {e}")))?;
        if let Some(s) = &self.thread_setup {
            dev.set_thread_setup(s.clone());
        }
        self.balloon = Some(dev.control());
        let id = config.id.clone().unwrap_or_else(|| "_balloon".into());
        self.add_virtio(id, config.pci_segment, Box::new(dev), None)?;
        Ok(())
    }

    /// Adds the virtio-mem device over `region` (the guest RAM mapped for
    /// it); it asks the driver to plug `memory.hotplugged_size` at start.
    fn add_virtio_mem(
        &mut self,
        region: &crate::memory::VirtioMemRegion,
        memory: &crate::config::MemoryConfig,
    ) -> Result<(), VmmError> {
        use virtio_devices::mem::{MemOptions, VirtioMem};
        let huge_page_size = if memory.hugepages {
            region.block_size
        } else {
            0
        };
        let mut dev = VirtioMem::new(MemOptions {
            addr: region.addr,
            region_size: region.size,
            block_size: region.block_size,
            requested_size: memory.hotplugged_size.unwrap_or(0),
            huge_page_size,
        })
        .map_err(|e| VmmError::Config(format!("--memory: hotplug_method=virtio-mem: {e}")))?;
        if let Some(s) = &self.thread_setup {
            dev.set_thread_setup(s.clone());
        }
        self.virtio_mem = Some(dev.control());
        self.add_virtio("_virtio-mem".into(), 0, Box::new(dev), None)?;
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
    /// hot-added): workers read the shared map on each request.
    pub fn update_memory(&self, memory: &vm_memory::GuestMemoryMmap) {
        match self.mem.lock() {
            Ok(guard) => guard.replace(memory.clone()),
            Err(e) => log::error!("cannot hand the devices the new guest memory: {e}"),
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

/// `SSSS:BB:DD.F` of slot `slot` on bus 0 of segment `segment`.
pub fn pci_bdf(segment: u16, slot: u8) -> String {
    format!("{segment:04x}:00:{slot:02x}.0")
}

/// Hotplug goes through segment 0's ACPI slots: refuses `pci_segment` ≥ 1.
pub(super) fn refuse_hotplug_segment(what: &str, segment: u16) -> Result<(), HotplugError> {
    if segment == 0 {
        return Ok(());
    }
    Err(HotplugError::NotOnSegment0(format!(
        "{what}.pci_segment={segment}: chv hot-plugs devices on PCI segment 0 only (its ACPI \
         hotplug slots are on segment 0's host bridge); cold-plug the device on segment \
         {segment} instead (in the VM config, or before vm.boot)"
    )))
}

impl DeviceManager {
    /// Whether a device uses `id`.
    fn has_id(&self, id: &str) -> bool {
        lock(&self.devices).iter().any(|d| d.id == id)
    }

    /// An id for a device without one: `<prefix><N>` (`_disk0`, `_net1`)
    /// with the smallest unused N.
    fn unused_id(&self, prefix: &str) -> String {
        (0..)
            .map(|n| format!("{prefix}{n}"))
            .find(|id| !self.has_id(id))
            .unwrap_or_default()
    }

    /// Plugs a virtio device into a free slot of the running guest: as a
    /// cold-plugged device (BAR, MSI-X irqfds, ioeventfds), then marks the
    /// slot in `PCIU` and raises the GED so the guest scans it. Only
    /// segment 0 has ACPI hotplug slots. A platform without ACPI hotplug has
    /// no way to tell the guest: the device is plugged and the guest finds it
    /// when it rescans the bus.
    pub fn hotplug_virtio(
        &mut self,
        id: String,
        device: Box<dyn VirtioDevice>,
        block_counters: Option<Arc<BlockCounters>>,
    ) -> Result<PciDeviceInfo, HotplugError> {
        if self.has_id(&id) {
            return Err(HotplugError::DuplicateId(id));
        }
        let Some(ged) = self.ged.clone() else {
            let slot = self.add_virtio(id.clone(), 0, device, block_counters)?;
            let bdf = format!("0000:00:{slot:02x}.0");
            log::info!(
                "{id}: plugged at {bdf}; {} has no PCI hotplug notification, so the guest \
                 finds it when it rescans the bus (echo 1 > /sys/bus/pci/rescan)",
                arch::PLATFORM.name
            );
            return Ok(PciDeviceInfo { id, bdf });
        };
        let slot = self.add_virtio(id.clone(), 0, device, block_counters)?;
        if slot > self.hotplug_slots {
            // The guest has no ACPI slot device there: take it out again.
            let seg = &self.segments[0];
            eject_slot(&self.vm, &seg.bus, &seg.by_slot, &self.devices, slot);
            return Err(HotplugError::NoHotplugSlot(self.hotplug_slots));
        }
        self.hotplug
            .slot_added(slot)
            .map_err(|e| HotplugError::Notify(e.to_string()))?;
        ged.raise(GED_PCI_HOTPLUG)
            .map_err(|e| HotplugError::Notify(e.to_string()))?;
        Ok(PciDeviceInfo {
            id,
            bdf: pci_bdf(0, slot),
        })
    }

    /// Hot-adds `disk` (`vm.add-disk` on a running VM); gives it an id
    /// first when it has none, so the caller can record it in the config.
    pub fn hotplug_disk(&mut self, disk: &mut DiskConfig) -> Result<PciDeviceInfo, HotplugError> {
        refuse_hotplug_segment("disk", disk.pci_segment)?;
        let id = match &disk.id {
            Some(id) if self.has_id(id) => return Err(HotplugError::DuplicateId(id.clone())),
            Some(id) => id.clone(),
            None => self.unused_id("_disk"),
        };
        let (blk, counters) = self.build_disk(disk, &id)?;
        let info = self.hotplug_virtio(id.clone(), blk, counters)?;
        disk.id = Some(id);
        Ok(info)
    }

    /// Hot-adds `net` (`vm.add-net` on a running VM): opens or creates its
    /// tap on this (VMM) thread; gives it an id (`_net<N>`) first when it
    /// has none, so the caller can record it in the config.
    pub fn hotplug_net(&mut self, net: &mut NetConfig) -> Result<PciDeviceInfo, HotplugError> {
        refuse_hotplug_segment("net", net.pci_segment)?;
        let id = match &net.id {
            Some(id) if self.has_id(id) => return Err(HotplugError::DuplicateId(id.clone())),
            Some(id) => id.clone(),
            None => self.unused_id("_net"),
        };
        let (dev, counters) = self.build_net(net, &id)?;
        let info = self.hotplug_virtio(id.clone(), dev, None)?;
        self.set_net_counters(&id, counters);
        net.id = Some(id);
        Ok(info)
    }

    /// Hot-adds `vsock` (`vm.add-vsock` on a running VM): binds its socket
    /// on this (VMM) thread; refused when the VM already has a vsock
    /// device. Gives it the id `_vsock` when it has none.
    pub fn hotplug_vsock(
        &mut self,
        vsock: &mut VsockConfig,
    ) -> Result<PciDeviceInfo, HotplugError> {
        refuse_hotplug_segment("vsock", vsock.pci_segment)?;
        if self.vsock_plugged {
            return Err(HotplugError::VsockExists);
        }
        let id = vsock
            .id
            .clone()
            .unwrap_or_else(|| VSOCK_DEFAULT_ID.to_string());
        if self.has_id(&id) {
            return Err(HotplugError::DuplicateId(id));
        }
        let dev = self.build_vsock(vsock, &id)?;
        let info = self.hotplug_virtio(id.clone(), dev, None)?;
        self.vsock_plugged = true;
        vsock.id = Some(id);
        Ok(info)
    }

    /// Asks the guest to release disk or network device `id` (`vm.remove-device`): marks its
    /// slot in `PCID` and raises the GED. The device goes away when the
    /// guest ejects the slot; returns the slot.
    pub fn request_unplug(&mut self, id: &str) -> Result<u8, HotplugError> {
        self.reap_pmem();
        let slot = {
            let devs = lock(&self.devices);
            let dev = devs
                .iter()
                .find(|d| d.id == id)
                .ok_or_else(|| HotplugError::NotFound(id.to_string()))?;
            // Disk, net, fs and pmem devices only: dropping a vsock
            // device unlinks its socket, which the vCPU thread running the
            // eject may not do; console and rng are not hotplugged.
            if !dev.removable {
                return Err(HotplugError::NotRemovable(id.to_string()));
            }
            if dev.segment != 0 {
                return Err(HotplugError::NotOnSegment0(format!(
                    "{id}: on PCI segment {} (pci_segment): chv unplugs devices on segment 0 only",
                    dev.segment
                )));
            }
            dev.slot
        };
        let ged = self.ged()?;
        self.hotplug
            .request_eject(slot)
            .map_err(|e| HotplugError::Notify(e.to_string()))?;
        ged.raise(GED_PCI_HOTPLUG)
            .map_err(|e| HotplugError::Notify(e.to_string()))?;
        log::info!("{id}: asked the guest to eject PCI slot {slot}");
        Ok(slot)
    }

    /// Presses the ACPI power button (`vm.power-button`).
    pub fn power_button(&self) -> std::io::Result<()> {
        match &self.ged {
            Some(ged) => ged.raise(GED_POWER_BUTTON),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                arch::PLATFORM.unsupported("the ACPI power button"),
            )),
        }
    }

    /// A handle on the GED for events raised elsewhere (CPU hotplug);
    /// `None` on platforms without ACPI hotplug.
    pub fn ged_events(&self) -> Option<GedEvents> {
        self.ged.clone()
    }

    /// The GED, or why hotplug cannot be signalled on this platform.
    fn ged(&self) -> Result<GedEvents, HotplugError> {
        self.ged
            .clone()
            .ok_or_else(|| HotplugError::Unsupported(arch::PLATFORM.unsupported("PCI hotplug")))
    }

    /// The root bus of PCI segment `segment`.
    fn segment_bus(&self, segment: u16) -> Option<&Arc<Mutex<PciBus>>> {
        self.segments.get(usize::from(segment)).map(|s| &s.bus)
    }

    /// Ids and slots of the devices on the bus, in the order they were added.
    pub fn device_slots(&self) -> Vec<(String, u8)> {
        lock(&self.devices)
            .iter()
            .map(|d| (d.id.clone(), d.slot))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotplug_slots_cover_cold_devices_plus_spares() {
        let mut config = VmConfig::default();
        if arch::PLATFORM.acpi_hotplug.is_none() {
            // No ACPI slot devices to describe on this platform.
            assert_eq!(hotplug_slots_for(&config), 0);
            return;
        }
        config.console.mode = ConsoleOutputMode::Off;
        assert_eq!(hotplug_slots_for(&config), HOTPLUG_SPARE_SLOTS);
        config.console.mode = ConsoleOutputMode::Tty;
        config.disks = Some(vec![DiskConfig::default(); 3]);
        assert_eq!(hotplug_slots_for(&config), 4 + HOTPLUG_SPARE_SLOTS);
        config.disks = Some(vec![DiskConfig::default(); 40]);
        assert_eq!(hotplug_slots_for(&config), 31, "bus 0 has 31 slots");
        // Devices on segment 1 take no slot of segment 0.
        let on1 = DiskConfig {
            pci_segment: 1,
            ..DiskConfig::default()
        };
        config.disks = Some(vec![on1; 3]);
        assert_eq!(hotplug_slots_for(&config), 1 + HOTPLUG_SPARE_SLOTS);
    }
}
