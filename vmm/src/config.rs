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
    /// virtio-console output (off until the virtio issue lands).
    #[serde(default = "ConsoleConfig::default_console")]
    pub console: ConsoleConfig,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            cpus: CpusConfig::default(),
            memory: MemoryConfig::default(),
            payload: PayloadConfig::default(),
            serial: ConsoleConfig::default_serial(),
            console: ConsoleConfig::default_console(),
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
        Self { mode: ConsoleOutputMode::Null, file: None }
    }
    /// virtio-console default: absent.
    pub fn default_console() -> Self {
        Self { mode: ConsoleOutputMode::Off, file: None }
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
