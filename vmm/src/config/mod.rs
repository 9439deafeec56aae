//! The VM configuration model shared by the CLI and the REST API.
//!
//! Field names, JSON shapes and defaults follow Cloud Hypervisor's
//! `VmConfig` so its clients (`ch-remote`, Kata's `clh` driver and
//! runtime-rs) send their bodies unchanged. Every property of Cloud
//! Hypervisor's schema is known: a value chv provides, or that asks for
//! Cloud Hypervisor's default or "off", is accepted and echoed in `vm.info`;
//! any other is refused by [`VmConfig::validate`] with the field named,
//! never ignored. Keys that are not part of the schema are ignored (and
//! logged by [`parse_json`]), as in Cloud Hypervisor, none of whose config
//! structs denies unknown fields.

use serde::{Deserialize, Serialize};

mod console;
mod cpus;
mod devices;
mod disk;
mod error;
mod fs;
mod memory;
mod net;
mod payload;
mod platform;
mod pmem;
mod rate_limit;
#[cfg(test)]
mod tests;

pub use console::*;
pub use cpus::*;
pub use devices::*;
pub use disk::*;
pub use error::*;
pub use fs::FsConfig;
pub use fs::{default_fs_num_queues, default_fs_queue_size, MAX_FS_QUEUES, MAX_FS_QUEUE_SIZE};
pub use memory::*;
pub use net::*;
pub use payload::*;
pub use platform::*;
pub use pmem::PmemConfig;

pub use rate_limit::{RateLimitGroupConfig, RateLimiterConfig, TokenBucketConfig};

/// Everything needed to build and boot one VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    #[serde(default)]
    pub disks: Option<Vec<DiskConfig>>,
    /// virtio-rng entropy device.
    #[serde(default)]
    pub rng: Option<RngConfig>,
    /// virtio-net devices over tap interfaces, in PCI slot order.
    #[serde(default)]
    pub net: Option<Vec<NetConfig>>,
    /// Rate limits shared by the disks naming them in `rate_limit_group`.
    #[serde(default)]
    pub rate_limit_groups: Option<Vec<RateLimitGroupConfig>>,
    /// virtio-vsock device with the hybrid Unix-socket backend.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-balloon.
    #[serde(default)]
    pub balloon: Option<BalloonConfig>,
    /// virtio-fs shares.
    #[serde(default)]
    pub fs: Option<Vec<FsConfig>>,
    /// virtio-pmem devices.
    #[serde(default)]
    pub pmem: Option<Vec<PmemConfig>>,
    /// Generic vhost-user devices.
    #[serde(default)]
    pub generic_vhost_user: Option<Vec<GenericVhostUserConfig>>,
    /// The port-0xe9 debug console.
    #[serde(default)]
    pub debug_console: DebugConsoleConfig,
    /// VFIO devices.
    #[serde(default)]
    pub devices: Option<Vec<DeviceConfig>>,
    /// vfio-user devices.
    #[serde(default)]
    pub user_devices: Option<Vec<UserDeviceConfig>>,
    /// vDPA devices.
    #[serde(default)]
    pub vdpa: Option<Vec<VdpaConfig>>,
    /// Guest NUMA nodes.
    #[serde(default)]
    pub numa: Option<Vec<NumaConfig>>,
    /// A virtual IOMMU.
    #[serde(default)]
    pub iommu: bool,
    /// A watchdog device.
    #[serde(default)]
    pub watchdog: bool,
    /// An emulated RTC on PCI.
    #[serde(default)]
    pub rtc: Option<RtcConfig>,
    /// A pvpanic device.
    #[serde(default)]
    pub pvpanic: bool,
    /// Per-segment MMIO aperture weights.
    #[serde(default)]
    pub pci_segments: Option<Vec<PciSegmentConfig>>,
    /// PCI segments and SMBIOS identity.
    #[serde(default)]
    pub platform: Option<PlatformConfig>,
    /// A TPM.
    #[serde(default)]
    pub tpm: Option<TpmConfig>,
    /// Landlock confinement of the VMM process.
    #[serde(default)]
    pub landlock_enable: bool,
    /// Extra Landlock rules.
    #[serde(default)]
    pub landlock_rules: Option<Vec<LandlockConfig>>,
    /// SGX enclave page cache (older Cloud Hypervisor).
    #[serde(default)]
    pub sgx_epc: Option<Vec<SgxEpcConfig>>,
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
            net: None,
            rate_limit_groups: None,
            vsock: None,
            balloon: None,
            fs: None,
            pmem: None,
            generic_vhost_user: None,
            debug_console: DebugConsoleConfig::default(),
            devices: None,
            user_devices: None,
            vdpa: None,
            numa: None,
            iommu: false,
            watchdog: false,
            rtc: None,
            pvpanic: false,
            pci_segments: None,
            platform: None,
            tpm: None,
            landlock_enable: false,
            landlock_rules: None,
            sgx_epc: None,
        }
    }
}

/// Whether an optional list has entries.
fn present<T>(list: &Option<Vec<T>>) -> bool {
    list.as_ref().is_some_and(|l| !l.is_empty())
}

impl VmConfig {
    /// Refuses the device kinds and switches chv does not provide yet.
    fn validate_absent_devices(&self) -> Result<(), ConfigError> {
        let not_yet = "not implemented by chv yet";
        refuse_if(
            present(&self.generic_vhost_user),
            "generic_vhost_user",
            not_yet,
        )?;
        refuse_if(present(&self.devices), "devices", "no VFIO")?;
        refuse_if(present(&self.user_devices), "user_devices", "no vfio-user")?;
        refuse_if(present(&self.vdpa), "vdpa", "no vDPA")?;
        refuse_if(present(&self.numa), "numa", "one NUMA node only")?;
        refuse_if(present(&self.sgx_epc), "sgx_epc", "no SGX")?;
        refuse_if(self.iommu, "iommu=true", "no virtual IOMMU")?;
        refuse_if(self.watchdog, "watchdog=true", "no watchdog device")?;
        refuse_if(self.rtc.is_some(), "rtc", "the RTC is the CMOS clock")?;
        refuse_if(self.pvpanic, "pvpanic=true", "no pvpanic device")?;
        refuse_if(self.tpm.is_some(), "tpm", "no TPM")?;
        refuse_if(
            self.landlock_enable,
            "landlock_enable=true",
            "chv confines itself with per-thread seccomp filters",
        )?;
        refuse_if(
            present(&self.landlock_rules),
            "landlock_rules",
            "chv confines itself with per-thread seccomp filters",
        )?;
        refuse_if(
            self.debug_console.mode != ConsoleOutputMode::Off,
            format!("debug_console.mode={:?}", self.debug_console.mode),
            not_yet,
        )?;
        Ok(())
    }

    /// Checks that every device names an existing PCI segment, and the
    /// per-segment aperture weights.
    fn validate_segments(&self, segments: u16) -> Result<(), ConfigError> {
        let check = |field: String, seg: u16| {
            if seg >= segments {
                return Err(invalid(
                    format!("{field}.pci_segment={seg}"),
                    format!("the VM has {segments} PCI segment(s) (platform.num_pci_segments)"),
                ));
            }
            Ok(())
        };
        for (i, d) in self.disks.iter().flatten().enumerate() {
            check(format!("disks[{i}]"), d.pci_segment)?;
        }
        for (i, n) in self.net.iter().flatten().enumerate() {
            check(format!("net[{i}]"), n.pci_segment)?;
        }
        for (i, f) in self.fs.iter().flatten().enumerate() {
            check(format!("fs[{i}]"), f.pci_segment)?;
        }
        for (i, p) in self.pmem.iter().flatten().enumerate() {
            check(format!("pmem[{i}]"), p.pci_segment)?;
        }
        if let Some(r) = &self.rng {
            check("rng".into(), r.pci_segment)?;
        }
        if let Some(v) = &self.vsock {
            check("vsock".into(), v.pci_segment)?;
        }
        if let Some(b) = &self.balloon {
            check("balloon".into(), b.pci_segment)?;
        }
        check("console".into(), self.console.pci_segment)?;
        for (i, p) in self.pci_segments.iter().flatten().enumerate() {
            check(format!("pci_segments[{i}]"), p.pci_segment)?;
            for (name, w) in [
                ("mmio32_aperture_weight", p.mmio32_aperture_weight),
                ("mmio64_aperture_weight", p.mmio64_aperture_weight),
            ] {
                if w == 0 {
                    return Err(invalid(
                        format!("pci_segments[{i}].{name}=0"),
                        "a segment's share of the MMIO windows must be at least 1",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Device ids starting with this are reserved for the ids chv generates.
pub const RESERVED_ID_PREFIX: &str = "__";

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
        self.console.validate("console")?;
        self.validate_absent_devices()?;
        let platform = self.platform.clone().unwrap_or_default();
        platform.validate()?;
        self.validate_segments(platform.num_pci_segments)?;
        let disks = self.disks.as_deref().unwrap_or_default();
        for (index, disk) in disks.iter().enumerate() {
            disk.validate(index)?;
            let id = disk.id.as_ref();
            if id.is_some() && disks[..index].iter().any(|other| other.id.as_ref() == id) {
                return Err(ConfigError::DuplicateId {
                    index,
                    id: id.cloned().unwrap_or_default(),
                });
            }
        }
        if let Some(rng) = &self.rng {
            rng.validate()?;
        }
        if let Some(balloon) = &self.balloon {
            balloon.validate(self.memory.boot_size())?;
        }
        let nets = self.net.as_deref().unwrap_or_default();
        for (index, net) in nets.iter().enumerate() {
            net.validate(index)?;
            let Some(id) = &net.id else { continue };
            let clash = nets[..index].iter().any(|o| o.id.as_ref() == Some(id))
                || disks.iter().any(|d| d.id.as_ref() == Some(id));
            if clash {
                return Err(ConfigError::NetDuplicateId {
                    index,
                    id: id.clone(),
                });
            }
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
            let clash = vsock.id.as_ref().is_some_and(|id| {
                disks.iter().any(|d| d.id.as_ref() == Some(id))
                    || nets.iter().any(|n| n.id.as_ref() == Some(id))
            });
            if clash {
                return Err(ConfigError::VsockId(vsock.id.clone().unwrap_or_default()));
            }
        }
        fs::validate_fs_and_pmem(self)?;
        rate_limit::validate(self)
    }
}

/// Deserializes a configuration or request body from `bytes` (one JSON
/// value, optionally surrounded by whitespace). Unknown keys are ignored,
/// as Cloud Hypervisor ignores them, and each is logged with its path.
pub fn parse_json<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    what: &str,
) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_ignored::deserialize(&mut de, |path| {
        log::warn!("{what}: ignoring unknown field {path}");
    })?;
    de.end()?;
    Ok(value)
}

/// `#[serde(default = …)]` for settings that are on unless turned off.
pub(crate) fn default_true() -> bool {
    true
}

/// A value chv cannot honour: `field` names it with the value
/// (`disks[0].iommu=true`), `reason` says why.
pub fn unsupported(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Unsupported {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A value that is wrong in itself: `field` names it, `reason` says what
/// is expected.
pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Refuses `field` as [`unsupported`] when `cond` holds.
pub fn refuse_if(cond: bool, field: impl Into<String>, reason: &str) -> Result<(), ConfigError> {
    if cond {
        return Err(unsupported(field, reason));
    }
    Ok(())
}

/// Refuses a PCI slot chosen by the user (`pci_device_id`, named by
/// `field`): chv gives each device the first free slot of its segment
/// (the segment itself is checked against `platform.num_pci_segments`).
pub fn refuse_placement(field: &str, pci_device_id: Option<u8>) -> Result<(), ConfigError> {
    refuse_if(
        pci_device_id.is_some(),
        field,
        "devices get the first free PCI slot",
    )
}

/// Whether a user-given device id is acceptable: non-empty and outside the
/// `RESERVED_ID_PREFIX` namespace chv uses for the ids it generates.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty() && !id.starts_with(RESERVED_ID_PREFIX)
}
