//! x86_64 guest setup.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod error;
pub mod layout;
mod machine;
pub mod memory;
pub mod mptable;
pub mod regs;
pub mod seccomp;
pub mod smbios;
pub mod topology;
pub mod vcpu_state;
pub mod vm_state;

pub use boot::{
    configure_system, load_initramfs, load_initramfs_above, load_kernel, BootProtocol,
    InitramfsInfo, KernelEntry,
};
pub use cpuid::{
    is_pvm_host, validate_feature_names, vcpu_cpuid, CpuidPolicy, PVM_UNSUPPORTED_INSTRUCTIONS,
};
pub use error::{BootError, CpuidError, RegsError};
pub use machine::{
    instruction_pointer, internal_error_hint, irqchip_routes, load_payload, validate_cpu_features,
    BootEntry, CpuConfig, Machine, VmState, PLATFORM,
};
pub use memory::{e820_map, ram_regions, E820Entry, E820Kind};
pub use regs::configure_vcpu;
pub use vcpu_state::{FpuState, NestedState, StateError, VcpuState};
pub use vm_state::VmKvmState;
