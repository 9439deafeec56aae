//! `PmemConfig`: a host file the guest sees as persistent memory.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use virtio_devices::pmem::PMEM_ALIGNMENT;

use super::fs::check_id;
use super::*;

/// `--pmem file=…` (Cloud Hypervisor's `PmemConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmemConfig {
    /// Backing file.
    pub file: PathBuf,
    /// Size (the file's when absent).
    #[serde(default)]
    pub size: Option<u64>,
    /// Virtual IOMMU.
    #[serde(default)]
    pub iommu: bool,
    /// Map the file privately: guest writes never reach it.
    #[serde(default)]
    pub discard_writes: bool,
    /// Device id.
    #[serde(default)]
    pub id: Option<String>,
    /// PCI segment.
    #[serde(default)]
    pub pci_segment: u16,
    /// PCI device (slot) number.
    #[serde(default)]
    pub pci_device_id: Option<u8>,
}

impl PmemConfig {
    /// Checks device `index` of `VmConfig::pmem` (errors name
    /// `pmem[index].…`). The file is opened (and its size checked) when
    /// the device is built.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let field = |name: &str| format!("pmem[{index}].{name}");
        if self.file.as_os_str().is_empty() {
            return Err(invalid(field("file"), "must not be empty"));
        }
        if let Some(size) = self.size {
            if size == 0 || size % PMEM_ALIGNMENT != 0 {
                return Err(invalid(
                    field(&format!("size={size}")),
                    "must be a non-zero multiple of 2 MiB",
                ));
            }
        }
        refuse_if(self.iommu, field("iommu=true"), "no virtual IOMMU")?;
        refuse_placement(&field("pci_device_id"), self.pci_device_id)?;
        check_id(&field, self.id.as_deref())
    }
}
