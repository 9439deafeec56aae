//! aarch64 guest setup: the memory map, the arm64 `Image` boot protocol
//! with a device tree, vCPU init with PSCI, the in-kernel GICv3 and ITS
//! (or, without an ITS, the MSI frame's layout),
//! and the vCPU and GIC state of snapshots.

pub mod boot;
pub mod fdt;
pub mod gic;
mod gic_state;
pub mod layout;
mod machine;
pub mod regs;
pub mod seccomp;
pub mod vcpu_state;

pub use gic::NO_ITS_ENV;
pub use machine::{
    instruction_pointer, internal_error_hint, irqchip_routes, load_payload, ram_regions,
    validate_cpu_features, BootEntry, CpuConfig, Machine, VmState, MSI_FRAME, PLATFORM,
};
pub use vcpu_state::{StateError, VcpuState};
