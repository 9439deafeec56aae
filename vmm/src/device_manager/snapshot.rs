//! Pausing, saving and restoring the PCI devices of a VM.
//!
//! A restore rebuilds every device from the VM config (opening the same
//! disk images and taps) in the PCI slot it had, moves BAR0 back to where
//! the guest left it, then hands each transport its saved state.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use virtio_devices::transport::VirtioPciState;

use super::{lock, DeviceManager, PmemPlacement};

/// Config-space offsets of BAR0's two dwords (a 64-bit memory BAR).
const BAR0_LOW: u64 = 0x10;
const BAR0_HIGH: u64 = 0x14;

/// One PCI device in a snapshot.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciDeviceSnapshot {
    /// Device id (as in the VM config and `vm.remove-device`).
    pub id: String,
    /// Slot on bus 0.
    pub slot: u8,
    /// Where BAR0 was decoded (None if the guest disabled it).
    pub bar0: Option<u64>,
    /// Transport and device state.
    pub state: VirtioPciState,
}

/// The PCI devices of a VM in a snapshot.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesSnapshot {
    /// Hotpluggable slots the guest's ACPI tables describe.
    pub hotplug_slots: u8,
    /// Every device on the bus, in the order it was added.
    pub pci: Vec<PciDeviceSnapshot>,
    /// Where each virtio-pmem range sits in guest-physical space.
    #[serde(default)]
    pub pmem: Vec<PmemPlacement>,
}

impl DeviceManager {
    /// Stops every device worker (the VM's vCPUs are already paused), so
    /// queues and guest memory hold still.
    pub fn pause_all(&self) -> Result<(), String> {
        for dev in lock(&self.devices).iter() {
            lock(&dev.device)
                .pause()
                .map_err(|e| format!("{}: pause: {e}", dev.id))?;
        }
        Ok(())
    }

    /// Restarts the workers [`Self::pause_all`] stopped.
    pub fn resume_all(&self) -> Result<(), String> {
        for dev in lock(&self.devices).iter() {
            lock(&dev.device)
                .resume()
                .map_err(|e| format!("{}: resume: {e}", dev.id))?;
        }
        Ok(())
    }

    /// Releases (`false`) or takes back (`true`) the host locks of every
    /// device (disk images), with the devices paused: a live migration
    /// hands the disks to the receiving VMM this way.
    pub fn set_host_locks(&self, locked: bool) -> Result<(), String> {
        for dev in lock(&self.devices).iter() {
            lock(&dev.device)
                .set_host_locks(locked)
                .map_err(|e| format!("{}: {e}", dev.id))?;
        }
        Ok(())
    }

    /// The state of every device; call with the devices paused.
    pub fn snapshot(&self) -> Result<DevicesSnapshot, String> {
        let mut pci = Vec::new();
        for dev in lock(&self.devices).iter() {
            let mut transport = lock(&dev.device);
            // Backends with state of their own (virtiofsd) hand it over now.
            transport
                .prepare_snapshot()
                .map_err(|e| format!("{}: {e}", dev.id))?;
            let state = transport.state().map_err(|e| format!("{}: {e}", dev.id))?;
            pci.push(PciDeviceSnapshot {
                id: dev.id.clone(),
                slot: dev.slot,
                bar0: transport.bar0_base(),
                state,
            });
        }
        Ok(DevicesSnapshot {
            hotplug_slots: self.hotplug_slots,
            pci,
            pmem: self.pmem_placements(),
        })
    }

    /// Makes the devices added next land in the slots `snapshot` records
    /// for their ids (call before adding the configured devices).
    pub fn restore_slots(&mut self, snapshot: &DevicesSnapshot) {
        self.restore_pmem_placements(&snapshot.pmem);
        self.restore_slots = Some(
            snapshot
                .pci
                .iter()
                .map(|d| (d.id.clone(), d.slot))
                .collect::<HashMap<_, _>>(),
        );
    }

    /// Gives each rebuilt device its saved state: BAR0 where the guest
    /// left it, then the transport and device state (which restarts the
    /// workers of devices the driver had started).
    pub fn restore_devices(&mut self, snapshot: &DevicesSnapshot) -> Result<(), String> {
        self.restore_slots = None;
        self.restore_pmem = None;
        self.hotplug_slots = snapshot.hotplug_slots;
        let built: Vec<(String, u8)> = self.device_slots();
        if built.len() != snapshot.pci.len() {
            return Err(format!(
                "the VM config has {} PCI devices but the snapshot {}",
                built.len(),
                snapshot.pci.len()
            ));
        }
        for saved in &snapshot.pci {
            let (device, segment) = {
                let devs = lock(&self.devices);
                let found = devs.iter().find(|d| d.id == saved.id);
                match found {
                    Some(d) if d.slot == saved.slot => (d.device.clone(), d.segment),
                    Some(d) => {
                        return Err(format!(
                            "{}: rebuilt in slot {} but saved in slot {}",
                            saved.id, d.slot, saved.slot
                        ))
                    }
                    None => return Err(format!("{}: saved but not in the VM config", saved.id)),
                }
            };
            let current = lock(&device).bar0_base();
            if let (Some(to), true) = (saved.bar0, saved.bar0 != current) {
                // Through the bus, as a guest write would: that moves the
                // MMIO mapping and the ioeventfds with it.
                let Some(bus) = self.segment_bus(segment) else {
                    return Err(format!("{}: no PCI segment {segment}", saved.id));
                };
                let mut bus = lock(bus);
                bus.config_write(0, saved.slot, 0, BAR0_LOW, &(to as u32).to_le_bytes());
                bus.config_write(
                    0,
                    saved.slot,
                    0,
                    BAR0_HIGH,
                    &((to >> 32) as u32).to_le_bytes(),
                );
            }
            lock(&device)
                .restore(&saved.state)
                .map_err(|e| format!("{}: {e}", saved.id))?;
        }
        Ok(())
    }
}
