//! Architecture-specific parts of building a guest: where things live in guest
//! memory, how a kernel is loaded and entered, the initial vCPU state, the
//! interrupt controller, the platform devices and the firmware description
//! (ACPI tables on x86_64, a device tree on aarch64) the guest reads to
//! discover its hardware.
//!
//! Each architecture is a module (`x86_64`, `aarch64`) that provides the
//! same interface, re-exported at the crate root so the VMM never names an
//! architecture:
//!
//! - [`PLATFORM`]: the static [`Platform`] description (PCI windows,
//!   platform devices, ACPI hotplug registers, what is not supported);
//! - `ram_regions(size)`: the guest RAM layout;
//! - `Machine`: the VM-wide in-kernel parts (interrupt controller, timers)
//!   and how MSIs reach them (`msi_delivery`: KVM, or a VMM-side MSI frame),
//!   created before the vCPUs, finished after them, saved and restored;
//! - `CpuConfig`: builds and restores each vCPU's initial state;
//! - `load_payload`: loads kernel and initramfs and writes the firmware
//!   description, returning the `BootEntry` the boot vCPU starts at;
//! - `VcpuState`, `VmState`: the KVM state a snapshot keeps;
//! - `instruction_pointer`, `internal_error_hint`, `validate_cpu_features`;
//! - `seccomp`: the KVM ioctls each thread issues on this architecture.

mod platform;

pub use platform::*;

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;

#[cfg(target_arch = "aarch64")]
pub use aarch64::*;
