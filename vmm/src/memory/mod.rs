//! Guest RAM: how it is backed on the host ([`backing`]) and where its
//! zones sit in guest-physical space.

pub mod backing;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::config::VmConfig;

pub use backing::{BackingError, RamBacking, ZoneBacking};

/// Temporary switch for `shared=on` until the configuration schema has
/// the memory options: `CHV_MEMORY_SHARED=1` backs guest RAM with a memfd
/// mapped shared. Removed once `memory.shared` exists.
const SHARED_ENV: &str = "CHV_MEMORY_SHARED";

/// The zones of guest RAM `config` describes.
pub fn zones_for(config: &VmConfig) -> Vec<RamZone> {
    let shared = std::env::var_os(SHARED_ENV).is_some_and(|v| v == "1");
    vec![RamZone {
        field: "memory".into(),
        size: config.memory.size,
        backing: RamBacking {
            shared,
            ..RamBacking::default()
        },
    }]
}

/// Creates the guest RAM `config` describes, at the architecture's RAM
/// ranges.
pub fn create_for_config(config: &VmConfig) -> Result<GuestRam, BackingError> {
    let zones = zones_for(config);
    let total = zones.iter().map(|z| z.size).sum();
    create_guest_ram(&zones, &arch::ram_regions(total))
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
