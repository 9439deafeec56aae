//! The VM configuration model shared by the CLI and (later) the REST API.
//!
//! Field names and JSON shapes follow Cloud Hypervisor's `VmConfig` so
//! existing clients can send the same bodies.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything needed to build and boot one VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// vCPU topology and CPUID tweaks.
    #[serde(default)]
    pub cpus: CpusConfig,
    /// Guest RAM.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// What to boot.
    pub payload: PayloadConfig,
    /// Legacy 16550 serial port output.
    #[serde(default = "ConsoleConfig::default_serial")]
    pub serial: ConsoleConfig,
    /// virtio-console output.
    #[serde(default = "ConsoleConfig::default_console")]
    pub console: ConsoleConfig,
    /// virtio-blk disks, in PCI slot order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    /// virtio-rng entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
}

/// `--disk path=…,readonly=on,direct=on,…` (Cloud Hypervisor's `DiskConfig`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Host image file (raw or qcow2).
    pub path: Option<PathBuf>,
    /// Expose the disk read-only (VIRTIO_BLK_F_RO) and open the image read-only.
    #[serde(default)]
    pub readonly: bool,
    /// Open the image with O_DIRECT (bypass the host page cache).
    #[serde(default)]
    pub direct: bool,
    /// Number of request queues.
    #[serde(default = "default_disk_num_queues")]
    pub num_queues: usize,
    /// Size of each request queue.
    #[serde(default = "default_disk_queue_size")]
    pub queue_size: u16,
    /// Serial number returned by VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Device identifier (for hot-unplug and counters); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Image format ("raw" or "qcow2"); detected from the file when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<String>,
}

/// Default number of virtio-blk queues (as Cloud Hypervisor).
pub fn default_disk_num_queues() -> usize {
    1
}

/// Default virtio-blk queue size (as Cloud Hypervisor).
pub fn default_disk_queue_size() -> u16 {
    128
}

/// `--rng src=PATH` (Cloud Hypervisor's `RngConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {
    /// Host entropy source.
    pub src: PathBuf,
}

impl Default for RngConfig {
    fn default() -> Self {
        Self { src: PathBuf::from("/dev/urandom") }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            cpus: CpusConfig::default(),
            memory: MemoryConfig::default(),
            payload: PayloadConfig::default(),
            serial: ConsoleConfig::default_serial(),
            console: ConsoleConfig::default_console(),
            disks: None,
            rng: None,
        }
    }
}

/// `--cpus boot=N,max=M,features=...`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    /// vCPUs started at boot.
    pub boot_vcpus: u8,
    /// Upper bound for hotplug; equals `boot_vcpus` when not given.
    pub max_vcpus: u8,
    /// CPUID feature overrides.
    #[serde(default)]
    pub features: CpuFeatures,
}

impl Default for CpusConfig {
    fn default() -> Self {
        Self {
            boot_vcpus: 1,
            max_vcpus: 1,
            features: CpuFeatures::default(),
        }
    }
}

/// CPUID feature overrides from `--cpus features=a,b`.
///
/// On PVM hosts chv hides CPU features that host's instruction emulator cannot
/// run; each name listed here is exposed to the guest again (`all` re-exposes
/// every hidden feature).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuFeatures {
    /// Feature names to keep even where the host would have them hidden.
    #[serde(default)]
    pub keep: Vec<String>,
}

/// `--memory size=...`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { size: 512 << 20 }
    }
}

/// The kernel, initramfs and command line to boot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    /// ELF vmlinux (PVH or 64-bit entry) or bzImage.
    pub kernel: Option<PathBuf>,
    /// Optional initramfs loaded next to the kernel.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
}

/// Where a console device's output goes (Cloud Hypervisor's `ConsoleConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Output mode.
    pub mode: ConsoleOutputMode,
    /// Output file when `mode` is `File`.
    pub file: Option<PathBuf>,
}

impl ConsoleConfig {
    /// Serial default: present, output discarded (as Cloud Hypervisor).
    pub fn default_serial() -> Self {
        Self {
            mode: ConsoleOutputMode::Null,
            file: None,
        }
    }
    /// virtio-console default: absent.
    pub fn default_console() -> Self {
        Self {
            mode: ConsoleOutputMode::Off,
            file: None,
        }
    }
}

/// Console output modes, spelled as in Cloud Hypervisor's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleOutputMode {
    /// Device absent.
    Off,
    /// Host terminal (stdin/stdout); input is forwarded to the guest.
    Tty,
    /// Appended to a file.
    File,
    /// Device present, output discarded.
    Null,
}

/// Most vCPUs a VM may have (the x2APIC-less MADT/MP table limit, as in
/// Cloud Hypervisor).
pub const MAX_VCPUS: u8 = 254;

/// Guest RAM must be a whole number of these (4 KiB pages; a power of two).
pub const MEMORY_ALIGNMENT: u64 = 4 << 10;

/// Upper bound on guest RAM accepted by the configuration (1 TiB).
pub const MAX_MEMORY_SIZE: u64 = 1 << 40;

/// Why a [`VmConfig`] is not usable, whichever front end (CLI or API) built
/// it. Messages name the configuration field concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `boot_vcpus` outside `1..=MAX_VCPUS`.
    #[error("cpus.boot_vcpus={0}: must be between 1 and {MAX_VCPUS}")]
    BootVcpus(u8),
    /// `max_vcpus` below `boot_vcpus` or above `MAX_VCPUS`.
    #[error("cpus.max_vcpus={max}: must be between boot_vcpus ({boot}) and {MAX_VCPUS}")]
    MaxVcpus {
        /// The configured `boot_vcpus`.
        boot: u8,
        /// The configured `max_vcpus`.
        max: u8,
    },
    /// An empty CPU feature name.
    #[error("cpus.features.keep: empty feature name")]
    EmptyFeature,
    /// Zero bytes of guest RAM.
    #[error("memory.size=0: must not be zero")]
    MemoryZero,
    /// Guest RAM not a multiple of 4 KiB.
    #[error("memory.size={0}: must be a multiple of 4 KiB")]
    MemoryUnaligned(u64),
    /// Guest RAM above `MAX_MEMORY_SIZE`.
    #[error("memory.size={0}: must not exceed 1 TiB")]
    MemoryTooLarge(u64),
    /// No kernel to boot.
    #[error("payload.kernel: missing (chv boots a kernel directly)")]
    KernelMissing,
    /// A path field that is present but empty.
    #[error("{0}: empty path")]
    EmptyPath(&'static str),
    /// The kernel command line contains a NUL byte, which cannot be passed
    /// to the guest.
    #[error("payload.cmdline: contains a NUL byte")]
    CmdlineNul,
    /// A console in `File` mode without a file.
    #[error("{0}: mode File needs a file path")]
    ConsoleFileMissing(&'static str),
}

impl VmConfig {
    /// Checks the whole configuration for values the VMM cannot honour.
    ///
    /// Existence of files is not checked here; the VMM reports those when it
    /// opens them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cpus.validate()?;
        self.memory.validate()?;
        self.payload.validate()?;
        self.serial.validate("serial")?;
        self.console.validate("console")
    }
}

impl CpusConfig {
    /// Checks vCPU counts and feature names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_VCPUS).contains(&self.boot_vcpus) {
            return Err(ConfigError::BootVcpus(self.boot_vcpus));
        }
        if !(self.boot_vcpus..=MAX_VCPUS).contains(&self.max_vcpus) {
            return Err(ConfigError::MaxVcpus {
                boot: self.boot_vcpus,
                max: self.max_vcpus,
            });
        }
        if self.features.keep.iter().any(|name| name.trim().is_empty()) {
            return Err(ConfigError::EmptyFeature);
        }
        Ok(())
    }
}

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
        Ok(())
    }
}

impl PayloadConfig {
    /// Checks that a kernel is given and that no path is empty.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.kernel {
            None => return Err(ConfigError::KernelMissing),
            Some(path) if path.as_os_str().is_empty() => {
                return Err(ConfigError::EmptyPath("payload.kernel"))
            }
            Some(_) => {}
        }
        if self
            .initramfs
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(ConfigError::EmptyPath("payload.initramfs"));
        }
        if self.cmdline.as_ref().is_some_and(|c| c.contains('\0')) {
            return Err(ConfigError::CmdlineNul);
        }
        Ok(())
    }
}

impl ConsoleConfig {
    /// Checks that `File` mode has a non-empty path; `device` names the
    /// field (`serial` or `console`) in the error.
    pub fn validate(&self, device: &'static str) -> Result<(), ConfigError> {
        if self.mode == ConsoleOutputMode::File {
            match &self.file {
                None => return Err(ConfigError::ConsoleFileMissing(device)),
                Some(path) if path.as_os_str().is_empty() => {
                    return Err(ConfigError::EmptyPath(device))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod validate_tests {
    use super::*;

    fn booting() -> VmConfig {
        VmConfig {
            payload: PayloadConfig {
                kernel: Some(PathBuf::from("/vmlinux")),
                ..PayloadConfig::default()
            },
            ..VmConfig::default()
        }
    }

    #[test]
    fn default_with_kernel_is_valid() {
        assert_eq!(booting().validate(), Ok(()));
        assert_eq!(
            VmConfig::default().validate(),
            Err(ConfigError::KernelMissing)
        );
    }

    #[test]
    fn vcpu_limits() {
        let mut config = booting();
        config.cpus.boot_vcpus = 0;
        assert_eq!(config.validate(), Err(ConfigError::BootVcpus(0)));
        config.cpus.boot_vcpus = 255;
        config.cpus.max_vcpus = 255;
        assert_eq!(config.validate(), Err(ConfigError::BootVcpus(255)));
        config.cpus.boot_vcpus = 4;
        config.cpus.max_vcpus = 2;
        assert_eq!(
            config.validate(),
            Err(ConfigError::MaxVcpus { boot: 4, max: 2 })
        );
        config.cpus.max_vcpus = 254;
        assert_eq!(config.validate(), Ok(()));
        config.cpus.features.keep = vec![" ".into()];
        assert_eq!(config.validate(), Err(ConfigError::EmptyFeature));
    }

    #[test]
    fn memory_limits() {
        let mut config = booting();
        for (size, expected) in [
            (0, Err(ConfigError::MemoryZero)),
            (4097, Err(ConfigError::MemoryUnaligned(4097))),
            (
                MAX_MEMORY_SIZE + 4096,
                Err(ConfigError::MemoryTooLarge(MAX_MEMORY_SIZE + 4096)),
            ),
            (MAX_MEMORY_SIZE, Ok(())),
            (4096, Ok(())),
        ] {
            config.memory.size = size;
            assert_eq!(config.validate(), expected, "size {size}");
        }
    }

    #[test]
    fn payload_and_consoles() {
        let mut config = booting();
        config.payload.kernel = Some(PathBuf::new());
        assert_eq!(
            config.validate(),
            Err(ConfigError::EmptyPath("payload.kernel"))
        );
        config = booting();
        config.payload.initramfs = Some(PathBuf::new());
        assert_eq!(
            config.validate(),
            Err(ConfigError::EmptyPath("payload.initramfs"))
        );
        config = booting();
        config.payload.cmdline = Some("a\0b".into());
        assert_eq!(config.validate(), Err(ConfigError::CmdlineNul));
        config = booting();
        config.serial.mode = ConsoleOutputMode::File;
        assert_eq!(
            config.validate(),
            Err(ConfigError::ConsoleFileMissing("serial"))
        );
        config.serial.file = Some(PathBuf::from("/tmp/serial.log"));
        assert_eq!(config.validate(), Ok(()));
        config.console = ConsoleConfig {
            mode: ConsoleOutputMode::File,
            file: Some(PathBuf::new()),
        };
        assert_eq!(config.validate(), Err(ConfigError::EmptyPath("console")));
    }
}
