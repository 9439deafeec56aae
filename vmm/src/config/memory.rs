//! `MemoryConfig`: guest RAM.

use serde::{Deserialize, Serialize};

use super::*;

/// `--memory size=…,…` (Cloud Hypervisor's `MemoryConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Guest RAM at boot: `size`, or the zones' sizes when RAM is split
    /// into zones (then `size` is 0, as in Cloud Hypervisor).
    pub fn boot_size(&self) -> u64 {
        let zones: u64 = self.zones.iter().flatten().map(|z| z.size).sum();
        self.size.saturating_add(zones)
    }

    /// Checks the sizes (non-zero, page aligned, at most 1 TiB), the huge
    /// page size and the zones, and refuses by name what chv cannot do yet.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let zones = self.zones.as_deref().unwrap_or_default();
        if zones.is_empty() && self.size == 0 {
            return Err(ConfigError::MemoryZero);
        }
        if !zones.is_empty() && self.size != 0 {
            return Err(invalid(
                format!("memory.size={}", self.size),
                "must be 0 when memory.zones define the RAM",
            ));
        }
        if self.size & (MEMORY_ALIGNMENT - 1) != 0 {
            return Err(ConfigError::MemoryUnaligned(self.size));
        }
        if self.boot_size() > MAX_MEMORY_SIZE {
            return Err(ConfigError::MemoryTooLarge(self.boot_size()));
        }
        check_hugepage_size("memory", self.hugepages, self.hugepage_size)?;
        let not_yet = "not implemented by chv yet";
        self.validate_hotplug()?;
        refuse_if(
            self.hotplugged_size.is_some_and(|s| s > 0),
            "memory.hotplugged_size",
            not_yet,
        )?;
        refuse_if(self.reserve, "memory.reserve=true", not_yet)?;
        refuse_if(
            self.mergeable && (self.shared || self.hugepages),
            "memory.mergeable=true",
            KSM_PRIVATE_ONLY,
        )?;
        let mut ids: Vec<&str> = Vec::new();
        for zone in zones {
            zone.validate()?;
            if ids.contains(&zone.id.as_str()) {
                return Err(invalid(
                    format!("{}.id", zone.field()),
                    "is used by another zone",
                ));
            }
            ids.push(&zone.id);
        }
        Ok(())
    }
}

impl MemoryConfig {
    /// RAM that can be hot-added (`hotplug_size`, 0 when absent).
    pub fn hotplug_room(&self) -> u64 {
        self.hotplug_size.unwrap_or(0)
    }

    /// `hotplug_size` and `hotplug_method`: ACPI hotplug needs a platform
    /// with ACPI hotplug and ranges in its granule; virtio-mem is refused
    /// by name until chv has it.
    fn validate_hotplug(&self) -> Result<(), ConfigError> {
        let room = self.hotplug_room();
        if room == 0 {
            return Ok(());
        }
        refuse_if(
            self.zones.as_ref().is_some_and(|z| !z.is_empty()),
            format!("memory.hotplug_size={room}"),
            "with memory.zones: not implemented by chv yet",
        )?;
        if self.hotplug_method == HotplugMethod::VirtioMem {
            return Err(unsupported(
                "memory.hotplug_method=virtio-mem",
                "not implemented by chv yet; use hotplug_method=acpi",
            ));
        }
        let Some(acpi) = arch::PLATFORM.acpi_hotplug else {
            return Err(unsupported(
                "memory.hotplug_method=acpi",
                arch::PLATFORM.unsupported("ACPI memory hotplug"),
            ));
        };
        let align = acpi.memory_hotplug_align;
        if !room.is_multiple_of(align) {
            return Err(invalid(
                format!("memory.hotplug_size={room}"),
                format!("must be a multiple of {} MiB", align >> 20),
            ));
        }
        if self.boot_size().saturating_add(room) > MAX_MEMORY_SIZE {
            return Err(invalid(
                format!("memory.hotplug_size={room}"),
                "size + hotplug_size must not exceed 1 TiB",
            ));
        }
        Ok(())
    }
}

impl MemoryZoneConfig {
    /// The zone's name in error messages.
    pub fn field(&self) -> String {
        format!("memory.zones[{}]", self.id)
    }

    /// Checks one zone: an id, a non-zero page-aligned size, a valid huge
    /// page size; refuses what chv cannot do yet.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = self.field();
        if self.id.is_empty() {
            return Err(invalid("memory.zones[].id", "must not be empty"));
        }
        if self.size == 0 || self.size & (MEMORY_ALIGNMENT - 1) != 0 {
            return Err(invalid(
                format!("{field}.size={}", self.size),
                "must be a non-zero multiple of 4 KiB",
            ));
        }
        if self.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(invalid(format!("{field}.file"), "must not be empty"));
        }
        check_hugepage_size(&field, self.hugepages, self.hugepage_size)?;
        let not_yet = "not implemented by chv yet";
        refuse_if(
            self.host_numa_node.is_some(),
            format!("{field}.host_numa_node"),
            not_yet,
        )?;
        refuse_if(
            self.hotplug_size.is_some_and(|s| s > 0),
            format!("{field}.hotplug_size"),
            not_yet,
        )?;
        refuse_if(
            self.hotplugged_size.is_some_and(|s| s > 0),
            format!("{field}.hotplugged_size"),
            not_yet,
        )?;
        refuse_if(self.reserve, format!("{field}.reserve=true"), not_yet)?;
        refuse_if(
            self.mergeable && (self.shared || self.hugepages),
            format!("{field}.mergeable=true"),
            KSM_PRIVATE_ONLY,
        )?;
        Ok(())
    }
}

/// Why `mergeable` is refused on shared or huge-page RAM: the kernel's
/// KSM merges private anonymous pages only and ignores `MADV_MERGEABLE`
/// elsewhere, so the option would silently do nothing.
const KSM_PRIVATE_ONLY: &str = "KSM merges only private memory, not shared=on or hugepages=on RAM";

/// `hugepage_size` must be a power of two of at least 4 KiB, and needs
/// `hugepages`.
fn check_hugepage_size(field: &str, hugepages: bool, size: Option<u64>) -> Result<(), ConfigError> {
    let Some(size) = size else { return Ok(()) };
    if !hugepages {
        return Err(invalid(
            format!("{field}.hugepage_size={size}"),
            "needs hugepages=on",
        ));
    }
    if !size.is_power_of_two() || size < MEMORY_ALIGNMENT {
        return Err(invalid(
            format!("{field}.hugepage_size={size}"),
            "must be a power of two of at least 4 KiB",
        ));
    }
    Ok(())
}
