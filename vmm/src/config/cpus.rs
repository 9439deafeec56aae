//! `CpusConfig`: vCPU counts, topology and CPUID settings.

use serde::{Deserialize, Serialize};

use super::*;

/// `--cpus boot=N,max=M,topology=…,…` (Cloud Hypervisor's `CpusConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpusConfig {
    /// vCPUs started at boot.
    pub boot_vcpus: u8,
    /// Upper bound for hotplug; equals `boot_vcpus` when not given.
    pub max_vcpus: u8,
    /// Threads, cores, dies and packages the guest sees (CPUID leaves 0x4,
    /// 0xB, 0x1F and the MADT); by default every vCPU is its own core of
    /// one package.
    #[serde(default)]
    pub topology: Option<CpuTopology>,
    /// Hyper-V enlightenments; chv has none (`true` is refused).
    #[serde(default)]
    pub kvm_hyperv: bool,
    /// Guest physical address width (CPUID 0x80000008), capped at the
    /// host's.
    #[serde(default = "default_max_phys_bits")]
    pub max_phys_bits: u8,
    /// Nested virtualization (VMX/SVM exposed to the guest); Cloud
    /// Hypervisor's default is on. Only honoured where the host offers it.
    #[serde(default = "default_true")]
    pub nested: bool,
    /// Host CPUs each vCPU thread may run on.
    #[serde(default)]
    pub affinity: Option<Vec<CpuAffinity>>,
    /// CPUID feature settings (Cloud Hypervisor's `amx`, chv's `keep`).
    #[serde(default)]
    pub features: CpuFeatures,
    /// Core scheduling (Cloud Hypervisor's `Vm`, `Vcpu` or `Off`).
    #[serde(default)]
    pub core_scheduling: CoreScheduling,
    /// Cloud Hypervisor's CPU model for migration compatibility; chv
    /// passes the host's CPU through (only `host`).
    #[serde(default)]
    pub profile: CpuProfile,
}

/// Cloud Hypervisor's CPU profiles (JSON spellings `host`, `dev-laptop`,
/// `skylake`, `sapphire-rapids`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuProfile {
    /// The host's CPU model.
    #[default]
    Host,
    /// Cloud Hypervisor's development profile (refused).
    DevLaptop,
    /// Intel Skylake (refused).
    Skylake,
    /// Intel Sapphire Rapids (refused).
    SapphireRapids,
}

impl Default for CpusConfig {
    fn default() -> Self {
        Self {
            boot_vcpus: 1,
            max_vcpus: 1,
            topology: None,
            kvm_hyperv: false,
            max_phys_bits: default_max_phys_bits(),
            nested: true,
            affinity: None,
            features: CpuFeatures::default(),
            core_scheduling: CoreScheduling::default(),
            profile: CpuProfile::Host,
        }
    }
}

/// Cloud Hypervisor's default guest physical address width.
pub fn default_max_phys_bits() -> u8 {
    46
}

/// Narrowest guest physical address width accepted.
pub const MIN_PHYS_BITS: u8 = 32;
/// Widest guest physical address width (x86-64's architectural limit).
pub const MAX_PHYS_BITS: u8 = 52;
/// Host CPU numbers must be below this (the size of a `cpu_set_t`).
pub const MAX_HOST_CPUS: usize = 1024;

/// The CPU topology the guest sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTopology {
    /// Hardware threads per core.
    pub threads_per_core: u8,
    /// Cores per die.
    pub cores_per_die: u8,
    /// Dies per package.
    pub dies_per_package: u8,
    /// Packages (sockets).
    pub packages: u8,
}

impl CpuTopology {
    /// How many vCPUs the topology describes.
    pub fn vcpus(&self) -> u32 {
        self.to_arch().vcpus()
    }

    /// The arch layer's form.
    pub fn to_arch(self) -> arch::CpuTopology {
        arch::CpuTopology {
            threads_per_core: self.threads_per_core,
            cores_per_die: self.cores_per_die,
            dies_per_package: self.dies_per_package,
            packages: self.packages,
        }
    }
}

/// The host CPUs one vCPU may run on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuAffinity {
    /// The vCPU index.
    pub vcpu: u8,
    /// Host CPU numbers.
    pub host_cpus: Vec<usize>,
}

/// Cloud Hypervisor's core-scheduling modes (Linux `PR_SCHED_CORE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoreScheduling {
    /// All vCPUs of the VM share one core-scheduling cookie.
    #[default]
    Vm,
    /// Each vCPU has its own cookie.
    Vcpu,
    /// No core scheduling.
    Off,
}

/// CPUID feature overrides from `--cpus features=a,b`.
///
/// On PVM hosts chv hides CPU features that host's instruction emulator cannot
/// run; each name listed here is exposed to the guest again (`all` re-exposes
/// every hidden feature).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuFeatures {
    /// Intel AMX (Cloud Hypervisor's; chv cannot expose it: `true` is
    /// refused).
    #[serde(default)]
    pub amx: bool,
    /// Feature names to keep even where the host would have them hidden
    /// (chv's own).
    #[serde(default)]
    pub keep: Vec<String>,
}

/// Most vCPUs a VM may have (the x2APIC-less MADT/MP table limit, as in
/// Cloud Hypervisor).
pub const MAX_VCPUS: u8 = 254;

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
        if let Some(t) = &self.topology {
            let parts = [
                t.threads_per_core,
                t.cores_per_die,
                t.dies_per_package,
                t.packages,
            ];
            if parts.contains(&0) || t.vcpus() != u32::from(self.max_vcpus) {
                return Err(invalid(
                    "cpus.topology",
                    format!(
                        "threads_per_core={} x cores_per_die={} x dies_per_package={} x \
                         packages={} must be max_vcpus={} (and none zero)",
                        t.threads_per_core,
                        t.cores_per_die,
                        t.dies_per_package,
                        t.packages,
                        self.max_vcpus
                    ),
                ));
            }
            if let Some(reason) = t.to_arch().contiguity_error() {
                return Err(unsupported("cpus.topology", reason));
            }
        }
        refuse_if(
            self.kvm_hyperv,
            "cpus.kvm_hyperv=true",
            "chv has no Hyper-V enlightenments",
        )?;
        if !(MIN_PHYS_BITS..=MAX_PHYS_BITS).contains(&self.max_phys_bits) {
            return Err(invalid(
                format!("cpus.max_phys_bits={}", self.max_phys_bits),
                format!("must be between {MIN_PHYS_BITS} and {MAX_PHYS_BITS}"),
            ));
        }
        for (i, a) in self.affinity.iter().flatten().enumerate() {
            if a.vcpu >= self.max_vcpus {
                return Err(invalid(
                    format!("cpus.affinity[{i}].vcpu={}", a.vcpu),
                    format!("no such vCPU (max_vcpus={})", self.max_vcpus),
                ));
            }
            if a.host_cpus.is_empty() || a.host_cpus.iter().any(|&c| c >= MAX_HOST_CPUS) {
                return Err(invalid(
                    format!("cpus.affinity[{i}].host_cpus"),
                    format!("must list host CPUs between 0 and {}", MAX_HOST_CPUS - 1),
                ));
            }
            if self
                .affinity
                .iter()
                .flatten()
                .take(i)
                .any(|o| o.vcpu == a.vcpu)
            {
                return Err(invalid(
                    format!("cpus.affinity[{i}].vcpu={}", a.vcpu),
                    "given twice",
                ));
            }
        }
        refuse_if(
            self.profile != CpuProfile::Host,
            format!(
                "cpus.profile={}",
                serde_json::to_string(&self.profile).unwrap_or_default()
            ),
            "chv passes the host CPU model through (profile host)",
        )?;
        refuse_if(
            self.features.amx,
            "cpus.features.amx=true",
            "chv does not expose AMX",
        )?;
        Ok(())
    }
}
