//! The devices whose data lives outside chv: virtio-fs shares,
//! vhost-user-blk disks and vhost-user-net NICs (served by a vhost-user
//! backend over guest RAM shared with it) and virtio-pmem devices (a host file mapped into
//! guest-physical space as a KVM memory slot).
//!
//! A pmem range stays mapped until the VMM thread next looks at the
//! devices after the guest ejected the device ([`DeviceManager::reap_pmem`]):
//! the eject runs on a vCPU thread, whose seccomp filter does not allow
//! changing KVM memory slots.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use virtio_devices::fs::{new_virtio_fs, FsOptions};
use virtio_devices::pmem::{PmemMapping, VirtioPmem};
use virtio_devices::vhost_user_blk::{new_vhost_user_blk, VhostUserBlkOptions};
use virtio_devices::vhost_user_net::{new_vhost_user_net, SocketRole, VhostUserNetOptions};
use virtio_devices::VirtioDevice;

use super::{lock, DeviceManager, HotplugError, PciDeviceInfo};
use crate::config::{DiskConfig, FsConfig, NetConfig, PmemConfig, VhostMode};
use crate::VmmError;

/// First KVM memory slot of virtio-pmem ranges (RAM slots count from 0).
const PMEM_SLOT_BASE: u32 = 0x100;
/// Guest-physical alignment of a pmem range (a Linux memory section, so
/// the guest can give it struct pages for DAX).
const PMEM_ALIGN: u64 = 128 << 20;

/// A virtio-pmem backing file mapped into the guest.
pub(super) struct PmemPlug {
    /// The device's id.
    id: String,
    /// Its KVM memory slot.
    kvm_slot: u32,
    /// The mapping (kept alive as long as the slot).
    mapping: PmemMapping,
}

/// Where a pmem device's range sits in guest-physical space, saved with a
/// snapshot so a restore puts it back where the guest saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemPlacement {
    /// Device id.
    pub id: String,
    /// Guest-physical start.
    pub gpa: u64,
}

/// The vhost-user-blk options of a `vhost_user=true` disk.
fn vhost_blk_options(disk: &DiskConfig) -> Result<VhostUserBlkOptions, VmmError> {
    let socket = disk
        .vhost_socket
        .as_ref()
        .ok_or_else(|| VmmError::Config("--disk: vhost_user=on needs socket=PATH".into()))?;
    Ok(VhostUserBlkOptions {
        socket: socket.into(),
        num_queues: disk.num_queues,
        queue_size: disk.queue_size,
    })
}

/// The vhost-user-net options of a `vhost_user=true` NIC.
fn vhost_net_options(net: &NetConfig) -> Result<VhostUserNetOptions, VmmError> {
    let socket = net
        .vhost_socket
        .as_ref()
        .ok_or_else(|| VmmError::Config("--net: vhost_user=on needs socket=PATH".into()))?;
    let mac = super::build::guest_mac(net)?;
    Ok(VhostUserNetOptions {
        socket: socket.into(),
        role: match net.vhost_mode {
            VhostMode::Client => SocketRole::Client,
            VhostMode::Server => SocketRole::Server,
        },
        mac,
        queue_size: net.queue_size,
        offload_csum: net.offload_csum,
        offload_tso: net.offload_tso,
    })
}

impl DeviceManager {
    /// Connects to (or, in server mode, waits for) `net`'s vhost-user
    /// backend and builds the device.
    pub(super) fn build_vhost_user_net(
        &self,
        net: &NetConfig,
        id: &str,
    ) -> Result<Box<dyn VirtioDevice>, VmmError> {
        let opts = vhost_net_options(net)?;
        let dev = new_vhost_user_net(&opts, self.thread_setup.clone()).map_err(|e| {
            VmmError::Config(format!(
                "--net: id={id}: socket={}: {e}",
                opts.socket.display()
            ))
        })?;
        log::info!("{id}: vhost-user-net on {}", opts.socket.display());
        Ok(Box::new(dev))
    }

    /// Connects to `disk`'s vhost-user-blk backend and builds the device.
    pub(super) fn build_vhost_user_disk(
        &self,
        disk: &DiskConfig,
        id: &str,
    ) -> Result<Box<dyn VirtioDevice>, VmmError> {
        let opts = vhost_blk_options(disk)?;
        let dev = new_vhost_user_blk(&opts, self.thread_setup.clone()).map_err(|e| {
            VmmError::Config(format!(
                "--disk: id={id}: socket={}: {e}",
                opts.socket.display()
            ))
        })?;
        Ok(Box::new(dev))
    }

    /// Connects to `fs`'s backend and builds its virtio-fs device.
    pub(super) fn build_fs(&self, fs: &FsConfig) -> Result<Box<dyn VirtioDevice>, VmmError> {
        let opts = FsOptions {
            tag: fs.tag.clone(),
            socket: fs.socket.clone(),
            num_queues: fs.num_queues,
            queue_size: fs.queue_size,
        };
        let dev = new_virtio_fs(&opts, self.thread_setup.clone())
            .map_err(|e| VmmError::Config(format!("--fs: tag={}: {e}", fs.tag)))?;
        Ok(Box::new(dev))
    }

    /// Maps `p`'s file, gives it to KVM as a memory slot above the PCI
    /// windows (where a restored snapshot had it, else above the other
    /// pmem ranges) and builds its virtio-pmem device with id `id`.
    pub(super) fn build_pmem(
        &mut self,
        p: &PmemConfig,
        id: &str,
    ) -> Result<Box<dyn VirtioDevice>, VmmError> {
        self.reap_pmem();
        let err = |e: String| VmmError::Config(format!("--pmem: {e}"));
        let mapping =
            PmemMapping::open(&p.file, p.size, p.discard_writes).map_err(|e| err(e.to_string()))?;
        let start = match self.restore_pmem.as_ref().and_then(|m| m.get(id)) {
            Some(&gpa) => gpa,
            None => self
                .pmem
                .iter()
                .map(|m| m.mapping.guest_addr() + m.mapping.size())
                .max()
                .unwrap_or(arch::PLATFORM.pci.mmio64.1)
                .next_multiple_of(PMEM_ALIGN),
        };
        let overlaps = self.pmem.iter().any(|m| {
            start < m.mapping.guest_addr() + m.mapping.size()
                && m.mapping.guest_addr() < start + mapping.size()
        });
        if overlaps || start < arch::PLATFORM.pci.mmio64.1 {
            return Err(err(format!("{id}: no room at {start:#x}")));
        }
        let kvm_slot = (PMEM_SLOT_BASE..)
            .find(|s| self.pmem.iter().all(|m| m.kvm_slot != *s))
            .unwrap_or(PMEM_SLOT_BASE);
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: kvm_slot,
            guest_phys_addr: start,
            memory_size: mapping.size(),
            userspace_addr: mapping.host_addr(),
            flags: 0,
        };
        // SAFETY: the mapping is a live mmap kept in `self.pmem` for as
        // long as the slot exists (removed in `reap_pmem` before the
        // mapping is dropped).
        unsafe { self.vm.set_user_memory_region(region) }.map_err(VmmError::Kvm)?;
        let dev = VirtioPmem::new(&mapping, start).map_err(|e| err(e.to_string()));
        let mut dev = match dev {
            Ok(d) => d,
            Err(e) => {
                self.remove_pmem_slot(kvm_slot);
                return Err(e);
            }
        };
        if let Some(s) = &self.thread_setup {
            dev.set_thread_setup(s.clone());
        }
        log::info!(
            "{id}: {} ({} MiB{}) at {start:#x}",
            p.file.display(),
            mapping.size() >> 20,
            if p.discard_writes {
                ", writes discarded"
            } else {
                ""
            }
        );
        self.pmem.push(PmemPlug {
            id: id.to_string(),
            kvm_slot,
            mapping: mapping.at(start),
        });
        Ok(Box::new(dev))
    }

    /// Takes KVM memory slot `kvm_slot` out of the guest.
    fn remove_pmem_slot(&self, kvm_slot: u32) {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: kvm_slot,
            guest_phys_addr: 0,
            memory_size: 0,
            userspace_addr: 0,
            flags: 0,
        };
        // SAFETY: a zero-sized region deletes the slot; no memory is
        // handed to KVM.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            log::warn!("pmem: cannot remove KVM memory slot {kvm_slot}: {e}");
        }
    }

    /// Unmaps the pmem ranges whose device the guest ejected (or whose
    /// plugging failed): removes the KVM slot first, then the mapping.
    pub(super) fn reap_pmem(&mut self) {
        let devices = lock(&self.devices);
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pmem)
            .into_iter()
            .partition(|p| devices.iter().any(|d| d.id == p.id));
        drop(devices);
        self.pmem = keep;
        for p in gone {
            self.remove_pmem_slot(p.kvm_slot);
            log::info!(
                "{}: pmem range at {:#x} unmapped",
                p.id,
                p.mapping.guest_addr()
            );
        }
    }

    /// Where each pmem range is, for a snapshot.
    pub(super) fn pmem_placements(&self) -> Vec<PmemPlacement> {
        let devices = lock(&self.devices);
        self.pmem
            .iter()
            .filter(|p| devices.iter().any(|d| d.id == p.id))
            .map(|p| PmemPlacement {
                id: p.id.clone(),
                gpa: p.mapping.guest_addr(),
            })
            .collect()
    }

    /// Makes the pmem devices built next take the ranges a snapshot
    /// recorded for their ids.
    pub(super) fn restore_pmem_placements(&mut self, placements: &[PmemPlacement]) {
        self.restore_pmem = Some(
            placements
                .iter()
                .map(|p| (p.id.clone(), p.gpa))
                .collect::<HashMap<_, _>>(),
        );
    }

    /// Hot-adds virtio-fs share `fs` (`vm.add-fs` on a running VM): connects
    /// to its backend on this (VMM) thread; gives it an id (`_fs<N>`) first
    /// when it has none.
    pub fn hotplug_fs(&mut self, fs: &mut FsConfig) -> Result<PciDeviceInfo, HotplugError> {
        super::hotplug::refuse_hotplug_segment("fs", fs.pci_segment)?;
        let id = self.hotplug_id(fs.id.as_deref(), "_fs")?;
        let dev = self.build_fs(fs)?;
        let info = self.hotplug_virtio(id.clone(), dev, None)?;
        fs.id = Some(id);
        Ok(info)
    }

    /// Hot-adds pmem device `p` (`vm.add-pmem` on a running VM); gives it
    /// an id (`_pmem<N>`) first when it has none.
    pub fn hotplug_pmem(&mut self, p: &mut PmemConfig) -> Result<PciDeviceInfo, HotplugError> {
        super::hotplug::refuse_hotplug_segment("pmem", p.pci_segment)?;
        let id = self.hotplug_id(p.id.as_deref(), "_pmem")?;
        let dev = self.build_pmem(p, &id)?;
        let plugged = self.hotplug_virtio(id.clone(), dev, None);
        // A failed plug leaves a mapping without a device: unmap it.
        self.reap_pmem();
        let info = plugged?;
        p.id = Some(id);
        Ok(info)
    }

    /// The id a hot-added device gets: the user's (refused when taken) or
    /// `<prefix><N>`.
    pub(super) fn hotplug_id(
        &self,
        id: Option<&str>,
        prefix: &str,
    ) -> Result<String, HotplugError> {
        match id {
            Some(id) if self.has_id(id) => Err(HotplugError::DuplicateId(id.to_string())),
            Some(id) => Ok(id.to_string()),
            None => Ok(self.unused_id(prefix)),
        }
    }
}
