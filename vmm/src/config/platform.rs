//! Platform-wide settings of Cloud Hypervisor's `VmConfig`: PCI segments,
//! SMBIOS identity, NUMA and the sandboxing switches.

use serde::{Deserialize, Serialize};

use super::*;

/// `--platform num_pci_segments=…,serial_number=…,uuid=…,oem_strings=[…]`
/// (Cloud Hypervisor's `PlatformConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformConfig {
    /// PCI segments (host bridges), each with its own ECAM window.
    #[serde(default = "default_num_pci_segments")]
    pub num_pci_segments: u16,
    /// Segments behind a virtual IOMMU (chv has none).
    #[serde(default)]
    pub iommu_segments: Option<Vec<u16>>,
    /// Virtual IOMMU address width.
    #[serde(default)]
    pub iommu_address_width_bits: Option<u8>,
    /// SMBIOS system serial number (type 1).
    #[serde(default)]
    pub system_serial_number: Option<String>,
    /// The same, Cloud Hypervisor's older name.
    #[serde(default)]
    pub serial_number: Option<String>,
    /// SMBIOS system UUID (type 1).
    #[serde(default)]
    pub system_uuid: Option<String>,
    /// The same, Cloud Hypervisor's older name.
    #[serde(default)]
    pub uuid: Option<String>,
    /// SMBIOS OEM strings (type 11).
    #[serde(default)]
    pub oem_strings: Option<Vec<String>>,
    /// SMBIOS system manufacturer (type 1).
    #[serde(default)]
    pub system_manufacturer: Option<String>,
    /// SMBIOS product name (type 1).
    #[serde(default)]
    pub system_product_name: Option<String>,
    /// SMBIOS system version (type 1).
    #[serde(default)]
    pub system_version: Option<String>,
    /// SMBIOS family (type 1).
    #[serde(default)]
    pub system_family: Option<String>,
    /// SMBIOS SKU number (type 1).
    #[serde(default)]
    pub system_sku_number: Option<String>,
    /// SMBIOS chassis asset tag (type 3).
    #[serde(default)]
    pub chassis_asset_tag: Option<String>,
    /// Intel TDX guest.
    #[serde(default)]
    pub tdx: bool,
    /// AMD SEV-SNP guest.
    #[serde(default)]
    pub sev_snp: bool,
    /// VFIO through iommufd.
    #[serde(default)]
    pub iommufd: bool,
    /// Peer-to-peer DMA between VFIO devices (no VFIO in chv: no effect).
    #[serde(default = "default_true")]
    pub vfio_p2p_dma: bool,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            num_pci_segments: default_num_pci_segments(),
            iommu_segments: None,
            iommu_address_width_bits: None,
            system_serial_number: None,
            serial_number: None,
            system_uuid: None,
            uuid: None,
            oem_strings: None,
            system_manufacturer: None,
            system_product_name: None,
            system_version: None,
            system_family: None,
            system_sku_number: None,
            chassis_asset_tag: None,
            tdx: false,
            sev_snp: false,
            iommufd: false,
            vfio_p2p_dma: true,
        }
    }
}

/// One PCI segment by default.
pub fn default_num_pci_segments() -> u16 {
    1
}

/// Most PCI segments chv gives a VM (Cloud Hypervisor's limit).
pub const MAX_PCI_SEGMENTS: u16 = 96;

impl PlatformConfig {
    /// The SMBIOS serial number, under either of its names.
    pub fn serial(&self) -> Option<&str> {
        self.system_serial_number
            .as_deref()
            .or(self.serial_number.as_deref())
    }

    /// The SMBIOS UUID, under either of its names.
    pub fn uuid(&self) -> Option<&str> {
        self.system_uuid.as_deref().or(self.uuid.as_deref())
    }

    /// The SMBIOS identity the guest sees (the UUID was checked by
    /// [`PlatformConfig::validate`]).
    pub fn identity(&self) -> arch::MachineIdentity {
        arch::MachineIdentity {
            manufacturer: self.system_manufacturer.clone(),
            product_name: self.system_product_name.clone(),
            version: self.system_version.clone(),
            serial_number: self.serial().map(str::to_owned),
            uuid: self.uuid().and_then(parse_uuid),
            sku_number: self.system_sku_number.clone(),
            family: self.system_family.clone(),
            chassis_asset_tag: self.chassis_asset_tag.clone(),
            oem_strings: self.oem_strings.clone().unwrap_or_default(),
        }
    }

    /// Checks the segment count and refuses what chv cannot provide.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_PCI_SEGMENTS).contains(&self.num_pci_segments) {
            return Err(invalid(
                format!("platform.num_pci_segments={}", self.num_pci_segments),
                format!("must be between 1 and {MAX_PCI_SEGMENTS}"),
            ));
        }
        refuse_if(
            self.iommu_segments.as_ref().is_some_and(|s| !s.is_empty()),
            "platform.iommu_segments",
            "no virtual IOMMU",
        )?;
        refuse_if(self.tdx, "platform.tdx=true", "no confidential guests")?;
        refuse_if(
            self.sev_snp,
            "platform.sev_snp=true",
            "no confidential guests",
        )?;
        refuse_if(self.iommufd, "platform.iommufd=true", "no VFIO")?;
        let strings = [
            ("platform.serial_number", self.serial()),
            (
                "platform.system_manufacturer",
                self.system_manufacturer.as_deref(),
            ),
            (
                "platform.system_product_name",
                self.system_product_name.as_deref(),
            ),
            ("platform.system_version", self.system_version.as_deref()),
            ("platform.system_family", self.system_family.as_deref()),
            (
                "platform.system_sku_number",
                self.system_sku_number.as_deref(),
            ),
            (
                "platform.chassis_asset_tag",
                self.chassis_asset_tag.as_deref(),
            ),
        ];
        let oem = self
            .oem_strings
            .iter()
            .flatten()
            .map(|s| ("platform.oem_strings", Some(s.as_str())));
        for (field, value) in strings.into_iter().chain(oem) {
            if let Some(v) = value.filter(|v| v.contains('\0')) {
                return Err(invalid(
                    format!("{field}={v:?}"),
                    "SMBIOS strings cannot hold a NUL byte",
                ));
            }
        }
        if !arch::PLATFORM.smbios && self.identity() != arch::MachineIdentity::default() {
            return Err(invalid(
                "platform.serial_number/uuid/oem_strings/system_*/chassis_asset_tag",
                arch::PLATFORM.unsupported("SMBIOS"),
            ));
        }
        if self.oem_strings.as_ref().is_some_and(|s| s.len() > 255) {
            return Err(invalid("platform.oem_strings", "at most 255 strings"));
        }
        if let Some(uuid) = self.uuid() {
            if parse_uuid(uuid).is_none() {
                return Err(invalid(
                    format!("platform.uuid={uuid}"),
                    "not a UUID (expected 8-4-4-4-12 hex digits)",
                ));
            }
        }
        Ok(())
    }
}

/// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` into its 16 bytes, in the
/// order written.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Per-segment MMIO aperture weights (Cloud Hypervisor's
/// `PciSegmentConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciSegmentConfig {
    /// The segment.
    pub pci_segment: u16,
    /// Its share of the 32-bit MMIO window.
    #[serde(default = "default_weight")]
    pub mmio32_aperture_weight: u32,
    /// Its share of the 64-bit MMIO window.
    #[serde(default = "default_weight")]
    pub mmio64_aperture_weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// A guest NUMA node (Cloud Hypervisor's `NumaConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaConfig {
    /// Node id.
    pub guest_numa_id: u32,
    /// vCPUs of the node.
    #[serde(default)]
    pub cpus: Option<Vec<u32>>,
    /// Distances to other nodes.
    #[serde(default)]
    pub distances: Option<Vec<NumaDistance>>,
    /// Memory zones of the node.
    #[serde(default)]
    pub memory_zones: Option<Vec<String>>,
    /// PCI segments of the node.
    #[serde(default)]
    pub pci_segments: Option<Vec<u32>>,
    /// A device of the node.
    #[serde(default)]
    pub device_id: Option<String>,
    /// SGX EPC sections of the node (older Cloud Hypervisor).
    #[serde(default)]
    pub sgx_epc_sections: Option<Vec<String>>,
}

/// Distance from one NUMA node to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaDistance {
    /// The other node.
    pub destination: u32,
    /// The distance.
    pub distance: u32,
}

/// One Landlock rule (Cloud Hypervisor's `LandlockConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockConfig {
    /// Path the rule opens up.
    pub path: std::path::PathBuf,
    /// Access (`r`, `w`, `rw`).
    pub access: String,
}
