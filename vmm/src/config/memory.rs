//! `MemoryConfig`: guest RAM.

use serde::{Deserialize, Serialize};

use super::*;

/// `--memory size=…,…` (Cloud Hypervisor's `MemoryConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Guest RAM in bytes (at boot).
    pub size: u64,
    /// Room for memory added later (`vm.resize desired_ram`).
    #[serde(default)]
    pub hotplug_size: Option<u64>,
    /// Memory already hot-added (kept across reboot and restore).
    #[serde(default)]
    pub hotplugged_size: Option<u64>,
    /// Let KSM merge identical pages (`MADV_MERGEABLE`).
    #[serde(default)]
    pub mergeable: bool,
    /// How memory is hot-added: ACPI memory devices or virtio-mem.
    #[serde(default)]
    pub hotplug_method: HotplugMethod,
    /// Back RAM with a shared memfd (vhost-user backends map it).
    #[serde(default)]
    pub shared: bool,
    /// Back RAM with huge pages.
    #[serde(default)]
    pub hugepages: bool,
    /// Huge page size in bytes (the host default when absent).
    #[serde(default)]
    pub hugepage_size: Option<u64>,
    /// Populate all of RAM at start (`MAP_POPULATE`).
    #[serde(default)]
    pub prefault: bool,
    /// Reserve swap space for RAM (no `MAP_NORESERVE`).
    #[serde(default)]
    pub reserve: bool,
    /// Ask for transparent huge pages (`MADV_HUGEPAGE`).
    #[serde(default = "default_true")]
    pub thp: bool,
    /// RAM split into zones with their own backing.
    #[serde(default)]
    pub zones: Option<Vec<MemoryZoneConfig>>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            size: 512 << 20,
            hotplug_size: None,
            hotplugged_size: None,
            mergeable: false,
            hotplug_method: HotplugMethod::default(),
            shared: false,
            hugepages: false,
            hugepage_size: None,
            prefault: false,
            reserve: false,
            thp: true,
            zones: None,
        }
    }
}

/// How memory is hot-added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HotplugMethod {
    /// ACPI memory devices (Cloud Hypervisor's default).
    #[default]
    Acpi,
    /// A virtio-mem device.
    VirtioMem,
}

/// One memory zone (Cloud Hypervisor's `MemoryZoneConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryZoneConfig {
    /// Zone id.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// Backing file (or directory for an unnamed temporary file).
    #[serde(default)]
    pub file: Option<std::path::PathBuf>,
    /// KSM merging.
    #[serde(default)]
    pub mergeable: bool,
    /// Shared mapping.
    #[serde(default)]
    pub shared: bool,
    /// Huge pages.
    #[serde(default)]
    pub hugepages: bool,
    /// Huge page size.
    #[serde(default)]
    pub hugepage_size: Option<u64>,
    /// Host NUMA node to bind to.
    #[serde(default)]
    pub host_numa_node: Option<u32>,
    /// Room for hot-added memory in this zone.
    #[serde(default)]
    pub hotplug_size: Option<u64>,
    /// Memory already hot-added to this zone.
    #[serde(default)]
    pub hotplugged_size: Option<u64>,
    /// Populate at start.
    #[serde(default)]
    pub prefault: bool,
    /// Reserve swap space.
    #[serde(default)]
    pub reserve: bool,
}

/// Guest RAM must be a whole number of these (4 KiB pages; a power of two).
pub const MEMORY_ALIGNMENT: u64 = 4 << 10;

/// Upper bound on guest RAM accepted by the configuration (1 TiB).
pub const MAX_MEMORY_SIZE: u64 = 1 << 40;

impl MemoryConfig {
    /// Checks that the RAM size is non-zero, page aligned and at most 1 TiB.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.size == 0 {
            return Err(ConfigError::MemoryZero);
        }
        if self.size & (MEMORY_ALIGNMENT - 1) != 0 {
            return Err(ConfigError::MemoryUnaligned(self.size));
        }
        if self.size > MAX_MEMORY_SIZE {
            return Err(ConfigError::MemoryTooLarge(self.size));
        }
        let not_yet = "not implemented by chv yet";
        refuse_if(
            self.hotplug_size.is_some_and(|s| s > 0),
            "memory.hotplug_size",
            not_yet,
        )?;
        refuse_if(
            self.hotplugged_size.is_some_and(|s| s > 0),
            "memory.hotplugged_size",
            not_yet,
        )?;
        refuse_if(self.mergeable, "memory.mergeable=true", not_yet)?;
        refuse_if(self.shared, "memory.shared=true", not_yet)?;
        refuse_if(self.hugepages, "memory.hugepages=true", not_yet)?;
        refuse_if(
            self.hugepage_size.is_some(),
            "memory.hugepage_size",
            not_yet,
        )?;
        refuse_if(self.prefault, "memory.prefault=true", not_yet)?;
        refuse_if(self.reserve, "memory.reserve=true", not_yet)?;
        refuse_if(
            self.zones.as_ref().is_some_and(|z| !z.is_empty()),
            "memory.zones",
            not_yet,
        )?;
        Ok(())
    }
}
