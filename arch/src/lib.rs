//! Architecture-specific parts of building a guest: where things live in guest
//! memory, how a kernel is loaded and entered, the initial vCPU state, and the
//! firmware tables (ACPI) the guest reads to discover its hardware.
//!
//! Only x86_64 exists today; each architecture lives in its own module so an
//! aarch64 port adds a sibling module without touching the VMM core.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use x86_64::*;
