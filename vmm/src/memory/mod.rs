//! Guest RAM: how it is backed on the host ([`backing`]) and where its
//! zones sit in guest-physical space.

pub mod backing;
pub mod hotplug;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::config::{HotplugMethod, VmConfig};

pub use backing::{BackingError, RamBacking, ZoneBacking};

/// The zones of guest RAM `config` describes: one zone `memory` with
/// the memory options, or the `memory.zones` in order.
pub fn zones_for(config: &VmConfig) -> Vec<RamZone> {
    let memory = &config.memory;
    let zones = memory.zones.as_deref().unwrap_or_default();
    if zones.is_empty() {
        return vec![RamZone {
            field: "memory".into(),
            size: memory.size,
            backing: RamBacking {
                shared: memory.shared,
                hugepages: memory.hugepages,
                hugepage_size: memory.hugepage_size,
                prefault: memory.prefault,
                thp: memory.thp,
                mergeable: memory.mergeable,
                file: None,
            },
        }];
    }
    zones
        .iter()
        .map(|zone| RamZone {
            field: zone.field(),
            size: zone.size,
            backing: RamBacking {
                shared: zone.shared,
                hugepages: zone.hugepages,
                hugepage_size: zone.hugepage_size,
                prefault: zone.prefault,
                // Zones have no thp option of their own: the VM's applies.
                thp: memory.thp,
                mergeable: zone.mergeable,
                file: zone.file.clone(),
            },
        })
        .collect()
}

/// Where a virtio-mem device's region sits: its guest-physical start and
/// size, block size and the zone that backs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioMemRegion {
    /// Guest-physical start (aligned to the hotplug granule).
    pub addr: u64,
    /// Bytes (`memory.hotplug_size`).
    pub size: u64,
    /// Bytes of a block.
    pub block_size: u64,
    /// How the region is backed: as the boot RAM, never prefaulted.
    pub zone: RamZone,
}

/// The virtio-mem region of `config` (`hotplug_method=virtio-mem` with a
/// `hotplug_size`): above the boot RAM in the platform's hotplug window,
/// so outside the firmware's RAM map.
pub fn virtio_mem_region(config: &VmConfig) -> Option<VirtioMemRegion> {
    let memory = &config.memory;
    let size = memory.hotplug_room();
    if memory.hotplug_method != HotplugMethod::VirtioMem || size == 0 {
        return None;
    }
    let layout = arch::PLATFORM.acpi_hotplug?;
    let boot = zones_for(config);
    let ram_end = arch::ram_regions(boot.iter().map(|z| z.size).sum())
        .last()
        .map_or(0, |(a, l)| a.0 + *l as u64);
    let (addr, _) = layout.hotplug_range(ram_end, 0, size)?;
    let mut backing = boot.first()?.backing.clone();
    // Prefaulting would make the whole region resident before a block is plugged.
    backing.prefault = false;
    Some(VirtioMemRegion {
        addr,
        size,
        block_size: memory.virtio_mem_block_size(),
        zone: RamZone {
            field: "memory.hotplug_size".into(),
            size,
            backing,
        },
    })
}

/// Every zone of guest RAM, the virtio-mem region's last: what a snapshot's
/// memory ranges hold.
pub fn all_zones(config: &VmConfig) -> Vec<RamZone> {
    let mut zones = zones_for(config);
    zones.extend(virtio_mem_region(config).map(|r| r.zone));
    zones
}

/// Creates the guest RAM `config` describes, at the architecture's RAM
/// ranges, and the virtio-mem region if it has one.
pub fn create_for_config(config: &VmConfig) -> Result<GuestRam, BackingError> {
    let zones = zones_for(config);
    let total = zones.iter().map(|z| z.size).sum();
    let mut layout = arch::ram_regions(total);
    let mut zones = zones;
    if let Some(region) = virtio_mem_region(config) {
        let len = usize::try_from(region.size).map_err(|_| BackingError::Map {
            field: region.zone.field.clone(),
            gpa: region.addr,
            len: 0,
            err: "too large".into(),
        })?;
        layout.push((GuestAddress(region.addr), len));
        zones.push(region.zone);
    }
    create_guest_ram(&zones, &layout)
}

/// One zone of guest RAM: `size` bytes backed as `backing` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamZone {
    /// The option naming the zone in error messages (`memory`, or
    /// `memory.zones[ID]`).
    pub field: String,
    /// Bytes of RAM.
    pub size: u64,
    /// How the host backs it.
    pub backing: RamBacking,
}

/// Guest RAM and the backings of its zones (which keep each zone's memfd
/// or file).
pub struct GuestRam {
    /// The regions, in guest-physical order.
    pub memory: GuestMemoryMmap,
    /// One per zone, in the order given.
    pub zones: Vec<ZoneBacking>,
}

/// Creates guest RAM for `zones`, laid out one after the other over
/// `layout` (the architecture's RAM ranges for the zones' total size): a
/// zone that straddles a gap between two ranges gets one region on each
/// side, at consecutive offsets of its memfd or file.
pub fn create_guest_ram(
    zones: &[RamZone],
    layout: &[(GuestAddress, usize)],
) -> Result<GuestRam, BackingError> {
    let mut backings = Vec::with_capacity(zones.len());
    let mut regions = Vec::new();
    let mut ranges = layout.iter().map(|&(a, l)| (a.0, l as u64));
    let mut current = ranges.next();
    for zone in zones {
        let mut backing = ZoneBacking::new(&zone.field, zone.size, &zone.backing)?;
        let mut left = zone.size;
        while left > 0 {
            let Some((start, len)) = current else {
                return Err(BackingError::Map {
                    field: zone.field.clone(),
                    gpa: 0,
                    len: left as usize,
                    err: "the memory layout has no room left for the zone".into(),
                });
            };
            let take = left.min(len);
            regions.push(backing.map_region(GuestAddress(start), take as usize)?);
            left -= take;
            current = if take == len {
                ranges.next()
            } else {
                Some((start + take, len - take))
            };
        }
        backings.push(backing);
    }
    let memory = GuestMemoryMmap::from_regions(regions).map_err(|e| BackingError::Map {
        field: "memory".into(),
        gpa: 0,
        len: 0,
        err: e.to_string(),
    })?;
    Ok(GuestRam {
        memory,
        zones: backings,
    })
}

#[cfg(test)]
mod tests;
