//! PCI hotplug: which slots the ACPI tables describe as hotpluggable,
//! plugging a device into a running guest (`vm.add-*`), asking the guest to
//! release one (`vm.remove-device`) and the eject that takes it off the bus,
//! plus the other GED events (the power button).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::acpi::{
    GedEvents, GED_PCI_HOTPLUG, GED_POWER_BUTTON, GED_REGISTER_SIZE, PCI_HOTPLUG_REGISTER_SIZE,
};
use devices::pci::{PciBus, PciDevice};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio_devices::block::BlockCounters;
use virtio_devices::VirtioDevice;

use super::{lock, DeviceManager, PciDeviceHandle, SharedVirtioPci, VSOCK_DEFAULT_ID};
use crate::config::{ConsoleOutputMode, DiskConfig, NetConfig, VmConfig, VsockConfig};
use crate::VmmError;

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

/// Runs on the vCPU thread that wrote `B0EJ` for `slot`: stops the device
/// and takes it off the bus and out of KVM. Everything here must pass the
/// vCPU seccomp filter (ioeventfd/irqfd ioctls, joining the worker thread,
/// closing the disk image).
pub(super) fn eject_slot(
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
    pub(super) fn has_id(&self, id: &str) -> bool {
        lock(&self.devices).iter().any(|d| d.id == id)
    }

    /// An id for a device without one: `<prefix><N>` (`_disk0`, `_net1`)
    /// with the smallest unused N.
    pub(super) fn unused_id(&self, prefix: &str) -> String {
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
            let bdf = pci_bdf(0, slot);
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
    pub(super) fn ged(&self) -> Result<GedEvents, HotplugError> {
        self.ged
            .clone()
            .ok_or_else(|| HotplugError::Unsupported(arch::PLATFORM.unsupported("PCI hotplug")))
    }

    /// The root bus of PCI segment `segment`.
    pub(super) fn segment_bus(&self, segment: u16) -> Option<&Arc<Mutex<PciBus>>> {
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
