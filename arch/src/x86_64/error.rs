//! Error types of the x86_64 boot path: kernel/initramfs loading and boot
//! structures (`BootError`), vCPU register setup (`RegsError`) and CPUID
//! policy (`CpuidError`).

use std::io;

use vm_memory::GuestMemoryError;

/// Failures while loading the kernel/initramfs or writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be read or seeked.
    #[error("cannot read the kernel image: {0}")]
    KernelRead(#[source] io::Error),
    /// The kernel file has no content.
    #[error("the kernel image is empty")]
    EmptyKernel,
    /// The kernel file is neither an ELF (vmlinux) nor a bzImage.
    #[error("the kernel image is neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" setup header)")]
    UnknownKernelFormat,
    /// The ELF headers are malformed.
    #[error("malformed ELF kernel: {0}")]
    BadElf(&'static str),
    /// The bzImage setup header is unusable.
    #[error("malformed bzImage: {0}")]
    BadBzImage(&'static str),
    /// linux-loader refused the ELF kernel.
    #[error("cannot load the ELF kernel: {0}")]
    ElfLoad(#[source] linux_loader::loader::Error),
    /// linux-loader refused the bzImage kernel.
    #[error("cannot load the bzImage kernel: {0}")]
    BzImageLoad(#[source] linux_loader::loader::Error),
    /// The bzImage cannot be entered through the 64-bit boot protocol.
    #[error("the bzImage does not support 64-bit boot (boot protocol {version:#x}, xloadflags {xloadflags:#x}; need >= 0x20c and XLF_KERNEL_64)")]
    BzImageNot64Bit {
        /// Boot protocol version from the setup header.
        version: u16,
        /// `xloadflags` from the setup header.
        xloadflags: u16,
    },
    /// Some part of the kernel lies outside guest low RAM.
    #[error("the kernel needs guest memory [{start:#x}, {end:#x}) but low RAM ends at {ram_end:#x}; give the guest more memory")]
    KernelDoesNotFit {
        /// First guest-physical byte the kernel needs.
        start: u64,
        /// One past the last byte the kernel needs.
        end: u64,
        /// End of the RAM region the kernel must live in.
        ram_end: u64,
    },
    /// The initramfs file could not be read.
    #[error("cannot read the initramfs: {0}")]
    InitramfsRead(#[source] io::Error),
    /// The initramfs does not fit between the kernel and the end of low RAM.
    #[error("the initramfs ({size} bytes) does not fit in guest low RAM ({available} bytes free above {lowest:#x})")]
    InitramfsTooLarge {
        /// Size of the initramfs file.
        size: u64,
        /// Bytes available for it.
        available: u64,
        /// Lowest address it could have used.
        lowest: u64,
    },
    /// The kernel command line is too long for the reserved area.
    #[error("the kernel command line is {len} bytes; at most {max} are allowed")]
    CmdlineTooLong {
        /// Length of the given command line.
        len: usize,
        /// Largest accepted length (without the terminating NUL).
        max: usize,
    },
    /// The kernel command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineHasNul,
    /// The MP table does not fit between the EBDA and the ACPI tables.
    #[error("the MP table needs {size} bytes; only {available} are reserved for it")]
    MpTableTooLarge {
        /// Size of the floating pointer plus configuration table.
        size: usize,
        /// Bytes between the EBDA and the ACPI tables.
        available: usize,
    },
    /// The memory map has more entries than the boot structure can hold.
    #[error("the memory map has {0} entries, more than the boot structures hold")]
    TooManyE820Entries(usize),
    /// A boot structure could not be written to guest memory.
    #[error("cannot write the {what} to guest memory: {source}")]
    GuestWrite {
        /// Which structure.
        what: &'static str,
        /// Underlying guest memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Failures while setting up a vCPU's initial state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// An ioctl on the vCPU failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which ioctl.
        what: &'static str,
        /// Errno from KVM.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A boot structure (GDT, IDT, page tables) could not be written.
    #[error("cannot write the {what} to guest memory: {source}")]
    GuestWrite {
        /// Which structure.
        what: &'static str,
        /// Underlying guest memory error.
        #[source]
        source: GuestMemoryError,
    },
    /// The MSR list could not be built.
    #[error("cannot build the MSR list: {0}")]
    MsrList(String),
}

/// Failures while building the guest CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// A feature name given to keep is not one we know.
    #[error("unknown CPU feature {name:?}; known: {known}")]
    UnknownFeature {
        /// The name as given.
        name: String,
        /// Comma-separated list of accepted names.
        known: String,
    },
    /// The vCPU count is zero or the vCPU id is out of range.
    #[error("vCPU id {vcpu_id} is invalid for {num_vcpus} vCPUs")]
    BadVcpuId {
        /// The vCPU id.
        vcpu_id: u8,
        /// The number of vCPUs.
        num_vcpus: u8,
    },
    /// The resulting CPUID table could not be built.
    #[error("cannot build the CPUID table: {0}")]
    Table(String),
}
