//! The other devices of Cloud Hypervisor's `VmConfig`: `RngConfig`,
//! `VsockConfig`, `BalloonConfig`, and the device kinds chv does not provide yet (
//! VFIO, vDPA, generic vhost-user, TPM, debug console), which are accepted
//! only when absent.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::*;

/// `--rng src=PATH` (Cloud Hypervisor's `RngConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RngConfig {
    /// Host entropy source.
    pub src: PathBuf,
    /// Place the device behind a virtual IOMMU (chv has none).
    #[serde(default)]
    pub iommu: bool,
    /// Device id.
    #[serde(default)]
    pub id: Option<String>,
    /// PCI segment (host bridge) the device sits on.
    #[serde(default)]
    pub pci_segment: u16,
    /// PCI device (slot) number.
    #[serde(default)]
    pub pci_device_id: Option<u8>,
}

impl Default for RngConfig {
    fn default() -> Self {
        Self {
            src: PathBuf::from("/dev/urandom"),
            iommu: false,
            id: None,
            pci_segment: 0,
            pci_device_id: None,
        }
    }
}

impl RngConfig {
    /// Checks that the entropy source path is not empty.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.src.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath("rng.src"));
        }
        refuse_if(self.iommu, "rng.iommu=true", "no virtual IOMMU")?;
        refuse_placement("rng.pci_device_id", self.pci_device_id)?;
        Ok(())
    }
}

/// `--vsock cid=N,socket=PATH[,id=X]` (Cloud Hypervisor's `VsockConfig`):
/// a virtio-vsock device giving the guest
/// CID `cid`; host programs connect to the Unix socket `socket` and write
/// `CONNECT <port>`, guest connections to host port P reach `socket_P`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// Guest context id (3..=u32::MAX-1).
    pub cid: u32,
    /// Path of the listening Unix socket the VMM creates.
    pub socket: PathBuf,
    /// Place the device behind a virtual IOMMU (chv has none).
    #[serde(default)]
    pub iommu: bool,
    /// Device id (generated when absent).
    #[serde(default)]
    pub id: Option<String>,
    /// PCI segment (host bridge) the device sits on.
    #[serde(default)]
    pub pci_segment: u16,
    /// PCI device (slot) number.
    #[serde(default)]
    pub pci_device_id: Option<u8>,
}

/// Lowest guest CID (0, 1 and 2 are the hypervisor, local and host).
pub const MIN_VSOCK_CID: u32 = 3;
/// Highest guest CID (`u32::MAX` is `VMADDR_CID_ANY`).
pub const MAX_VSOCK_CID: u32 = u32::MAX - 1;

impl VsockConfig {
    /// Checks the CID range, the socket path and the id. Whether the
    /// socket's directory exists is checked when the device binds it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_VSOCK_CID..=MAX_VSOCK_CID).contains(&self.cid) {
            return Err(ConfigError::VsockCid(self.cid));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath("vsock.socket"));
        }
        refuse_if(self.iommu, "vsock.iommu=true", "no virtual IOMMU")?;
        refuse_placement("vsock.pci_device_id", self.pci_device_id)?;
        if let Some(id) = &self.id {
            if !valid_device_id(id) {
                return Err(ConfigError::VsockId(id.clone()));
            }
        }
        Ok(())
    }
}

/// `--balloon size=…` (Cloud Hypervisor's `BalloonConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonConfig {
    /// Device id.
    #[serde(default)]
    pub id: Option<String>,
    /// PCI segment.
    #[serde(default)]
    pub pci_segment: u16,
    /// PCI device (slot) number.
    #[serde(default)]
    pub pci_device_id: Option<u8>,
    /// Virtual IOMMU.
    #[serde(default)]
    pub iommu: bool,
    /// Initial balloon size in bytes.
    pub size: u64,
    /// Deflate when the guest runs out of memory.
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// Free page reporting.
    #[serde(default)]
    pub free_page_reporting: bool,
}

impl BalloonConfig {
    /// The size must be whole 4 KiB pages and leave the guest some RAM
    /// (`ram` bytes at boot); no virtual IOMMU.
    pub fn validate(&self, ram: u64) -> Result<(), ConfigError> {
        if !self.size.is_multiple_of(MEMORY_ALIGNMENT) {
            return Err(invalid(
                format!("balloon.size={}", self.size),
                "must be a multiple of 4 KiB",
            ));
        }
        if self.size >= ram {
            return Err(invalid(
                format!("balloon.size={}", self.size),
                format!("must be below the guest's {ram} bytes of RAM"),
            ));
        }
        refuse_if(self.iommu, "balloon.iommu=true", "no virtual IOMMU")?;
        refuse_placement("balloon.pci_device_id", self.pci_device_id)?;
        if let Some(id) = &self.id {
            if !valid_device_id(id) {
                return Err(invalid(
                    format!("balloon.id={id}"),
                    "must be non-empty and must not start with '_'",
                ));
            }
        }
        Ok(())
    }
}

/// A VFIO device (Cloud Hypervisor's `DeviceConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// Sysfs path of the device.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Virtual IOMMU.
    #[serde(default)]
    pub iommu: bool,
    /// Device id.
    #[serde(default)]
    pub id: Option<String>,
    /// PCI segment.
    #[serde(default)]
    pub pci_segment: u16,
    /// PCI device (slot) number.
    #[serde(default)]
    pub pci_device_id: Option<u8>,
    /// NVIDIA GPUDirect clique id.
    #[serde(default)]
    pub x_nv_gpudirect_clique: Option<u8>,
    /// BARs not to mmap.
    #[serde(default)]
    pub x_exclude_mmap_bars: Option<Vec<u64>>,
}

/// A vfio-user device (Cloud Hypervisor's `UserDeviceConfig`; also the
/// body of `vm.add-user-device`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDeviceConfig {
    /// The backend's socket.
    pub socket: PathBuf,
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

/// A vDPA device (Cloud Hypervisor's `VdpaConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdpaConfig {
    /// The vhost-vdpa character device.
    pub path: PathBuf,
    /// Queues.
    #[serde(default = "default_one")]
    pub num_queues: usize,
    /// Virtual IOMMU.
    #[serde(default)]
    pub iommu: bool,
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

fn default_one() -> usize {
    1
}

/// A generic vhost-user device (Cloud Hypervisor's
/// `GenericVhostUserConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenericVhostUserConfig {
    /// The backend's socket.
    pub socket: PathBuf,
    /// Size of each queue.
    pub queue_sizes: Vec<u16>,
    /// The virtio device type.
    pub device_type: u32,
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

/// A TPM emulator socket (Cloud Hypervisor's `TpmConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmConfig {
    /// swtpm's control socket.
    pub socket: PathBuf,
}

/// The debug console's default I/O port.
pub const DEBUG_CONSOLE_IOBASE: u16 = 0xe9;

/// The port-0xe9 debug console (Cloud Hypervisor's `DebugConsoleConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DebugConsoleConfig {
    /// Output file when `mode` is `File`.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Output mode.
    pub mode: ConsoleOutputMode,
    /// I/O port.
    #[serde(default)]
    pub iobase: Option<u16>,
}

impl Default for DebugConsoleConfig {
    fn default() -> Self {
        Self {
            file: None,
            mode: ConsoleOutputMode::Off,
            // Cloud Hypervisor's default port.
            iobase: Some(DEBUG_CONSOLE_IOBASE),
        }
    }
}

/// An emulated RTC on PCI (Cloud Hypervisor's `RtcConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcConfig {
    /// Device id.
    #[serde(default)]
    pub id: Option<String>,
    /// PCI segment.
    #[serde(default)]
    pub pci_segment: u16,
    /// PCI device (slot) number.
    #[serde(default)]
    pub pci_device_id: Option<u8>,
    /// Virtual IOMMU.
    #[serde(default)]
    pub iommu: bool,
}

/// An SGX enclave page cache section (older Cloud Hypervisor).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SgxEpcConfig {
    /// Section id.
    pub id: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Populate at start.
    #[serde(default)]
    pub prefault: bool,
}
