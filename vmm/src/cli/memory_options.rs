//! Parsing of `--memory`, `--memory-zone` and `--balloon` (Cloud
//! Hypervisor syntax) into [`MemoryConfig`], [`MemoryZoneConfig`] and
//! [`BalloonConfig`].
//!
//! Sizes are range-checked here so that errors name the key as written;
//! [`MemoryConfig::validate`] checks the combination (zones with
//! `size=0`, huge page sizes) and refuses what chv cannot do yet.

use std::path::PathBuf;

use super::options::{parse_size, parse_toggle, parse_u64, split_options, OptionError, OptionItem};
use crate::config::{
    BalloonConfig, HotplugMethod, MemoryConfig, MemoryZoneConfig, MAX_MEMORY_SIZE, MEMORY_ALIGNMENT,
};

/// Keys accepted by `--memory`, for error messages.
const MEMORY_KEYS: &str = "size, shared, hugepages, hugepage_size, prefault, thp, mergeable, \
                           hotplug_method, hotplug_size or hotplugged_size";

/// Keys accepted by `--memory-zone`, for error messages.
const ZONE_KEYS: &str = "id, size, file, shared, hugepages, hugepage_size, prefault, mergeable, \
                         host_numa_node, hotplug_size or hotplugged_size";

/// Parses `--memory size=SIZE[,shared=on][,hugepages=on,...]`.
pub(super) fn parse_memory(value: &str) -> Result<MemoryConfig, OptionError> {
    let mut config = MemoryConfig::default();
    for item in split_options(value)? {
        let toggle = || parse_toggle(&item.key, item.value()?);
        match item.key.as_str() {
            "size" => config.size = memory_size(&item, true)?,
            "shared" => config.shared = toggle()?,
            "hugepages" => config.hugepages = toggle()?,
            "hugepage_size" => config.hugepage_size = Some(memory_size(&item, false)?),
            "prefault" => config.prefault = toggle()?,
            "thp" => config.thp = toggle()?,
            "mergeable" => config.mergeable = toggle()?,
            "hotplug_method" => config.hotplug_method = hotplug_method(&item)?,
            "hotplug_size" => config.hotplug_size = Some(memory_size(&item, true)?),
            "hotplugged_size" => config.hotplugged_size = Some(memory_size(&item, true)?),
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: MEMORY_KEYS,
                })
            }
        }
    }
    Ok(config)
}

/// Parses one `--memory-zone id=ID,size=SIZE[,file=PATH][,shared=on]...`.
pub(super) fn parse_memory_zone(value: &str) -> Result<MemoryZoneConfig, OptionError> {
    let mut id = None;
    let mut size = None;
    let mut zone = MemoryZoneConfig {
        id: String::new(),
        size: 0,
        file: None,
        mergeable: false,
        shared: false,
        hugepages: false,
        hugepage_size: None,
        host_numa_node: None,
        hotplug_size: None,
        hotplugged_size: None,
        prefault: false,
        reserve: false,
    };
    for item in split_options(value)? {
        let toggle = || parse_toggle(&item.key, item.value()?);
        match item.key.as_str() {
            "id" => id = Some(item.non_empty_value()?.to_owned()),
            "size" => size = Some(memory_size(&item, false)?),
            "file" => zone.file = Some(PathBuf::from(item.non_empty_value()?)),
            "shared" => zone.shared = toggle()?,
            "hugepages" => zone.hugepages = toggle()?,
            "hugepage_size" => zone.hugepage_size = Some(memory_size(&item, false)?),
            "prefault" => zone.prefault = toggle()?,
            "mergeable" => zone.mergeable = toggle()?,
            "host_numa_node" => {
                let node = parse_u64(&item.key, item.value()?)?;
                zone.host_numa_node = Some(u32::try_from(node).map_err(|_| {
                    OptionError::invalid(&item.key, item.value().unwrap_or_default(), "too large")
                })?);
            }
            "hotplug_size" => zone.hotplug_size = Some(memory_size(&item, true)?),
            "hotplugged_size" => zone.hotplugged_size = Some(memory_size(&item, true)?),
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: ZONE_KEYS,
                })
            }
        }
    }
    zone.id = id.ok_or(OptionError::Missing("id=ID"))?;
    zone.size = size.ok_or(OptionError::Missing("size=SIZE"))?;
    Ok(zone)
}

/// Parses `hotplug_method=acpi|virtio-mem`.
fn hotplug_method(item: &OptionItem) -> Result<HotplugMethod, OptionError> {
    match item.value()? {
        "acpi" => Ok(HotplugMethod::Acpi),
        "virtio-mem" => Ok(HotplugMethod::VirtioMem),
        other => Err(OptionError::invalid(
            &item.key,
            other,
            "expected acpi or virtio-mem",
        )),
    }
}

/// Parses and range-checks a memory size (`zero_ok`: 0 is allowed, as
/// `size=0` is with zones).
fn memory_size(item: &OptionItem, zero_ok: bool) -> Result<u64, OptionError> {
    let value = item.value()?;
    let size =
        parse_size(value).map_err(|e| OptionError::invalid(&item.key, value, e.to_string()))?;
    let problem = if size == 0 && !zero_ok {
        "must not be zero"
    } else if size & (MEMORY_ALIGNMENT - 1) != 0 {
        "must be a multiple of 4 KiB"
    } else if size > MAX_MEMORY_SIZE {
        "must not exceed 1 TiB"
    } else {
        return Ok(size);
    };
    Err(OptionError::invalid(&item.key, value, problem))
}

/// Keys accepted by `--balloon`, for error messages.
const BALLOON_KEYS: &str =
    "size, deflate_on_oom, free_page_reporting, id, pci_segment or iommu=off";

/// Parses `--balloon size=SIZE[,deflate_on_oom=on][,free_page_reporting=on]`.
pub(super) fn parse_balloon(value: &str) -> Result<BalloonConfig, OptionError> {
    let mut balloon = BalloonConfig {
        id: None,
        pci_segment: 0,
        pci_device_id: None,
        iommu: false,
        size: 0,
        deflate_on_oom: false,
        free_page_reporting: false,
    };
    for item in split_options(value)? {
        let toggle = || parse_toggle(&item.key, item.value()?);
        match item.key.as_str() {
            "size" => balloon.size = memory_size(&item, true)?,
            "deflate_on_oom" => balloon.deflate_on_oom = toggle()?,
            "free_page_reporting" => balloon.free_page_reporting = toggle()?,
            "id" => balloon.id = Some(item.non_empty_value()?.to_owned()),
            "pci_segment" => balloon.pci_segment = super::device_options::pci_segment(&item)?,
            "iommu" => super::device_options::reject_iommu_on(&item)?,
            _ => {
                return Err(OptionError::UnknownKey {
                    key: item.key,
                    expected: BALLOON_KEYS,
                })
            }
        }
    }
    Ok(balloon)
}
